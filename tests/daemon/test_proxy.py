"""Proxies (issue 14), with a real proxy process (tests/proxy.py) that records what it relays:
``[canvas] proxy`` carries every Canvas request, loopback included; ``HTTPS_PROXY`` is ignored
for a loopback Canvas and honoured for one that is not (a made-up host the proxy maps to the
simulator behind a TLS front signed by a throwaway CA); ``NO_PROXY`` excludes; ``.netrc`` and
``REQUESTS_CA_BUNDLE`` are never read; ``sisdropd check`` names the proxy with its password masked."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support import REPO, TOKEN, USERS, DaemonProcess, Drop, wait_for

HOST = "canvas.test"  # reserved: never resolves, so only the proxy can reach it
PORT = 8443


class ProxyProcess:
    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.record = tmp_path / f"proxy-{len(list(tmp_path.glob('proxy-*')))}.jsonl"
        self.record.touch()
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "proxy.py"), str(self.record), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        self.proc.stdout.close()  # type: ignore[union-attr]


@pytest.fixture
def ca(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for canvas.test signed by it (as test_security does)."""
    if subprocess.run(["openssl", "version"], capture_output=True).returncode != 0:
        pytest.skip("openssl is not installed")
    ca_key, ca_pem, key, csr, crt = (tmp_path / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem"))
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_pem), "-days", "2", "-subj", "/CN=Test CA")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={HOST}")
    ext = tmp_path / "ext.cnf"
    ext.write_text(f"subjectAltName=DNS:{HOST}\n")
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_pem), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext))
    return ca_pem, crt, key


@pytest.fixture
def proxy(tmp_path: Path, drop: Drop, ca: tuple[Path, Path, Path]) -> Iterator[ProxyProcess]:
    _, crt, key = ca
    sim_port = urlsplit(drop.sim.url).port
    p = ProxyProcess(tmp_path, "--map", f"{HOST}:{PORT}=127.0.0.1:{sim_port}", "--tls-cert", str(crt), "--tls-key", str(key))
    yield p
    p.close()


def netrc_home(tmp_path: Path) -> str:
    """A HOME whose .netrc would replace our token with Basic auth if requests read it."""
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text(f"machine 127.0.0.1 login x password bogus-netrc-pw\nmachine {HOST} login x password bogus-netrc-pw\n")
    netrc.chmod(0o600)
    return str(home)


def test_canvas_proxy_carries_every_request_even_to_loopback(drop: Drop, proxy: ProxyProcess, tmp_path: Path) -> None:
    drop.write(canvas={"proxy": f"http://ops:s3cret-pw@127.0.0.1:{proxy.port}"})
    r = drop.cli("check", "-c", str(drop.config))
    assert r.returncode == 0, r.stdout
    assert f"ok: proxy http://ops:****@127.0.0.1:{proxy.port} (from [canvas] proxy)" in r.stdout
    assert "s3cret-pw" not in r.stdout + r.stderr
    d = DaemonProcess(drop, env=drop.env(HOME=netrc_home(tmp_path)))
    try:
        (drop.inbox / "users.csv").write_text(USERS)
        wait_for(lambda: drop.outcomes("done"), what="imported through the proxy")
    finally:
        d.close()
    got = proxy.entries()
    methods = {(e["method"], urlsplit(e["target"]).path.split("/sis_imports")[0]) for e in got}
    assert ("POST", "/api/v1/accounts/1") in methods and ("GET", "/api/v1/users/self") in methods, got
    assert all(e["target"].startswith(drop.sim.url) and e["proxy_auth"] for e in got), got
    assert {e["auth_scheme"] for e in got} == {"Bearer"}  # never .netrc's Basic
    assert TOKEN not in proxy.record.read_text()


def test_environment_proxy_is_ignored_for_a_loopback_canvas(drop: Drop, proxy: ProxyProcess) -> None:
    env = drop.env(HTTP_PROXY=proxy.url, HTTPS_PROXY=proxy.url, http_proxy=proxy.url, ALL_PROXY=proxy.url)
    r = drop.cli("check", "-c", str(drop.config), env=env)
    assert r.returncode == 0 and "ok: no proxy (direct: 127.0.0.1 is this host)" in r.stdout, r.stdout
    d = DaemonProcess(drop, env=env)
    try:
        (drop.inbox / "users.csv").write_text(USERS)
        wait_for(lambda: drop.outcomes("done"), what="imported directly")
    finally:
        d.close()
    assert proxy.entries() == []


def test_environment_proxy_carries_a_remote_canvas_and_no_proxy_excludes_it(
    drop: Drop, proxy: ProxyProcess, ca: tuple[Path, Path, Path], tmp_path: Path,
) -> None:
    ca_pem = ca[0]
    drop.write(canvas={"base_url": f"https://{HOST}:{PORT}", "ca_bundle": str(ca_pem)})
    # REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE would break TLS if read; .netrc would replace the token.
    base = drop.env(HOME=netrc_home(tmp_path), REQUESTS_CA_BUNDLE="/nonexistent.pem", CURL_CA_BUNDLE="/nonexistent.pem")
    env = {**base, "https_proxy": proxy.url}  # lower case, as curl prefers it
    r = drop.cli("check", "-c", str(drop.config), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ok: proxy {proxy.url} (from $HTTPS_PROXY)" in r.stdout
    d = DaemonProcess(drop, env=env)
    try:
        (drop.inbox / "users.csv").write_text(USERS)
        [done] = wait_for(lambda: drop.outcomes("done"), what="imported through the proxy")
        assert drop.sidecar(done)["workflow_state"] == "imported"
    finally:
        d.close()
    got = proxy.entries()
    assert {e["target"] for e in got if e["method"] == "CONNECT"} == {f"{HOST}:{PORT}"}
    inside = [e for e in got if e["via"] == "CONNECT"]
    assert {e["method"] for e in inside} >= {"GET", "POST"} and {e["auth_scheme"] for e in inside} == {"Bearer"}
    # NO_PROXY names it (upper case, a domain entry): straight to canvas.test, which does not resolve.
    seen = len(got)
    env = {**base, "HTTPS_PROXY": proxy.url, "NO_PROXY": "localhost,.test"}
    r = drop.cli("check", "-c", str(drop.config), env=env)
    assert f"ok: no proxy (direct: $NO_PROXY excludes {HOST} (.test))" in r.stdout, r.stdout
    assert r.returncode == 1 and "problem: Canvas:" in r.stdout and "Traceback" not in r.stdout + r.stderr
    assert len(proxy.entries()) == seen
    # An entry for another domain leaves it to the proxy.
    r = drop.cli("check", "-c", str(drop.config), env={**env, "NO_PROXY": "example.edu,10.0.0.0/8"})
    assert r.returncode == 0 and f"ok: proxy {proxy.url} (from $HTTPS_PROXY)" in r.stdout, r.stdout
    assert len(proxy.entries()) > seen


def test_a_remote_webhook_goes_through_the_environment_proxy_and_never_reads_netrc(
    tmp_path: Path, ca: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The webhook's session is as explicit as Canvas's: $HTTPS_PROXY for a host that is not
    this one, and no .netrc (whose Basic credentials would replace nothing, but leak)."""
    import http.server
    import threading

    from sisdropd.config import NotifyConfig
    from sisdropd.notify import Notifier

    got: list[tuple[str, str | None, bytes]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((self.path, self.headers.get("Authorization"), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    serving = threading.Thread(target=hook.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    ca_pem, crt, key = ca
    p = ProxyProcess(tmp_path, "--map", f"{HOST}:{PORT}=127.0.0.1:{hook.server_address[1]}", "--tls-cert", str(crt), "--tls-key", str(key))
    try:
        monkeypatch.setenv("HTTPS_PROXY", p.url)
        monkeypatch.setenv("HOME", netrc_home(tmp_path))
        n = Notifier(NotifyConfig(webhook=f"https://{HOST}:{PORT}/hooks/sis", events=("failed",)), ca_bundle=str(ca_pem))
        n.send("failed", {"file": "users.csv", "import_id": 7, "state": "failed", "reason": "Canvas failed the import"})
        n.close(timeout=20)
        assert n.delivered == 1 and n.failures == 0
    finally:
        p.close()
        hook.shutdown()
        serving.join(10)
        hook.server_close()
    [(path, auth, body)] = got
    assert path == "/hooks/sis" and auth is None and json.loads(body)["event"] == "failed"
    assert {e["target"] for e in p.entries() if e["method"] == "CONNECT"} == {f"{HOST}:{PORT}"}
