"""Bad input and secrets: names that try to forge logs, files that are not files, the token."""

from __future__ import annotations

import http.server
import io
import json
import os
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sisdropd import folders, intake, logs
from sisdropd.config import LogConfig
from sisdropd.watcher import Watcher
from tests.support import TOKEN, USERS, Drop, Inbox, wait_for


def test_a_name_with_a_newline_cannot_forge_a_log_line(drop: Drop, daemon) -> None:
    d = daemon()
    name = "evil\nERROR   forged.csv: the import was deleted.csv"
    (drop.inbox / name).write_text(USERS)
    [done] = wait_for(lambda: drop.outcomes("done"), what="done")
    assert done.name.endswith(name) and drop.sidecar(done)["original_name"] == name
    wait_for(lambda: "-> done/" in d.log(), what="outcome")
    lines = d.log().splitlines()
    assert not any(line.startswith("ERROR   forged") for line in lines)
    assert any("evil\\nERROR   forged.csv" in line for line in lines)


@pytest.mark.parametrize("name", ["a b  c.csv", "ユーザー 2026.csv", "x" * 230 + ".csv", "ü" * 125 + ".csv"])
def test_odd_and_long_names_are_imported_and_fit(drop: Drop, daemon, name: str) -> None:
    daemon()
    (drop.inbox / name).write_text(USERS)
    [done] = wait_for(lambda: drop.outcomes("done"), what="done")
    assert drop.sidecar(done)["original_name"] == name
    tail = os.fsencode(name)[-200:]
    assert os.fsencode(done.name).endswith(tail)  # a name too long to keep whole keeps its end
    assert len(os.fsencode(done.name + ".errors.csv")) <= 255


def test_fifo_is_never_opened_and_does_not_block_the_queue(drop: Drop, daemon) -> None:
    d = daemon()
    os.mkfifo(drop.inbox / "pipe.csv")
    (drop.inbox / "users.csv").write_text(USERS)
    wait_for(lambda: len(drop.finished()) == 2, timeout=20, what="both finished")
    [failed] = drop.outcomes("failed")
    assert "FIFO" in drop.sidecar(failed)["reason"] and failed.is_fifo()
    assert len(drop.sim.imports()) == 1 and d.proc.poll() is None


def test_file_deleted_before_it_is_taken_is_no_error(drop: Drop, daemon) -> None:
    drop.write(watch={"settle_seconds": 1.0})
    d = daemon()
    (drop.inbox / "gone.csv").write_text(USERS)
    (drop.inbox / "gone.csv").unlink()
    (drop.inbox / "users.csv").write_text(USERS)
    wait_for(lambda: drop.outcomes("done"), what="the other file")
    assert "gone.csv" not in d.log() and drop.status()["recent"][0]["original_name"] == "users.csv"


def test_token_never_reaches_any_file_under_the_drop_folder(drop: Drop, daemon) -> None:
    drop.sim.inject("500", method="GET", count=2)
    drop.sim.inject("drop_after", method="POST")
    d = daemon()
    (drop.inbox / "users.csv").write_text(USERS)
    (drop.inbox / "bad.csv").write_text("nope\n")
    wait_for(lambda: len(drop.finished()) == 2, timeout=30, what="finished")
    assert d.terminate() == 0
    for p in drop.root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert TOKEN.encode() not in p.read_bytes(), p
    assert TOKEN not in drop.cli("status", "--json", "-c", str(drop.config)).stdout


def test_redaction_covers_messages_fields_exceptions_and_urls() -> None:
    for fmt in ("text", "json"):
        out = io.StringIO()
        logs.setup(LogConfig(level="DEBUG", format=fmt), stream=out)
        secret = "s3cr3t-" + fmt
        logs.add_secret(secret)
        logs.event(file=f"f-{secret}.csv").info("GET https://x/api/v1/?access_token={} failed", secret)
        try:
            raise RuntimeError(f"boom with {secret}")
        except RuntimeError:
            logs.event().exception("crash")
        text = out.getvalue()
        assert secret not in text and "[REDACTED]" in text, text
        if fmt == "json":
            assert all(json.loads(line) for line in text.splitlines())
    logs.setup(None)


def test_token_file_readable_by_all_is_refused_without_showing_it(drop: Drop, tmp_path: Path) -> None:
    tf = tmp_path / "token"
    tf.write_text(TOKEN)
    os.chmod(tf, 0o644)
    drop.write(canvas={"token_file": str(tf)})
    env = drop.env()
    del env["SISDROPD_TOKEN"]
    r = drop.cli("run", "-c", str(drop.config), env=env)
    assert r.returncode == 2 and "readable by all users" in r.stderr and TOKEN not in r.stderr + r.stdout


@pytest.fixture
def tls_canvas(tmp_path: Path):
    """An https server on 127.0.0.1 with a certificate from our own throwaway CA."""
    if subprocess.run(["openssl", "version"], capture_output=True).returncode != 0:
        pytest.skip("openssl is not installed")
    ca_key, ca, key, csr, crt = (tmp_path / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem"))
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=Test CA")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext))

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps({"id": 17, "name": "SIS"} if "users/self" in self.path else {"sis_imports": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{srv.server_port}", ca
    srv.shutdown()


def test_tls_is_verified_and_ca_bundle_trusts_an_institutions_ca(drop: Drop, tls_canvas) -> None:
    url, ca = tls_canvas
    drop.write(canvas={"base_url": url})
    r = drop.cli("check", "-c", str(drop.config))
    assert r.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in r.stdout and "Traceback" not in r.stdout + r.stderr
    drop.write(canvas={"base_url": url, "ca_bundle": str(ca)})
    r = drop.cli("check", "-c", str(drop.config))
    assert r.returncode == 0 and "accepts the token" in r.stdout, r.stdout


names = st.text(
    alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=60
).filter(lambda n: n not in (".", "..") and len(os.fsencode(n)) < 200)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names)
def test_names_are_safe_in_logs_and_round_trip(name: str) -> None:
    assert "\n" not in logs.escape(name) and "\r" not in logs.escape(name)
    stored = folders.stored_name(name)
    assert folders.original_name(stored) == name
    assert len(os.fsencode(stored + ".errors.csv")) <= 255


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(names, min_size=1, max_size=12, unique=True))
def test_watcher_takes_exactly_the_eligible_names(tmp_path_factory, batch: list[str]) -> None:
    box = Inbox(tmp_path_factory.mktemp("w"), extensions=["csv", "zip", "xml"], truncated_after=0)
    inbox = box.path
    w = Watcher(inbox, box.intake, settle_seconds=0.05, rescan_interval=1)
    w.start()
    try:
        for n in batch:
            (inbox / n).write_bytes(b"x")
        want = sorted(n for n in batch if intake.eligible(n, ("csv", "zip", "xml")))
        wait_for(lambda: sorted(box.taken()) == want, timeout=10, what=f"taken {want}")
        assert sorted(os.listdir(inbox)) == sorted(set(batch) - set(want))
    finally:
        w.stop()
        box.close()
