"""Bad input and secrets: names that try to forge logs, files that are not files, the token."""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import signal
import sqlite3
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sisdropd import folders, intake, logs
from sisdropd.config import LogConfig
from sisdropd.watcher import Watcher
from tests.support import TOKEN, USERS, Drop, Inbox, wait_for, write_config


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


# ---------------------------------------------------------------------------------------
# Issue 12: each attack, reproduced against the real daemon and commands.


def _no_token(*texts: str) -> None:
    for t in texts:
        assert TOKEN not in t and "second-line-SECRET" not in t, t


def test_a_token_with_a_second_line_is_refused_and_never_shown(drop: Drop, tmp_path: Path) -> None:
    """Point 7. Before: check printed "InvalidHeader: ... 'Bearer <token>\\n<line 2>'"."""
    tf = tmp_path / "token"
    tf.write_text(f"{TOKEN}\nsecond-line-SECRET\n")
    tf.chmod(0o600)
    drop.write(canvas={"token_file": str(tf)})
    env = drop.env()
    del env["SISDROPD_TOKEN"]
    r = drop.cli("check", "-c", str(drop.config), env=env)
    assert r.returncode == 1 and f"problem: token: {tf}: the token has more than one line" in r.stdout, r.stdout
    _no_token(r.stdout, r.stderr)
    for args in (["run"], ["submit", str(tmp_path / "x.csv")]):
        r = drop.cli(*args, "-c", str(drop.config), env=env)
        assert r.returncode == 2 and f"{tf}: the token has more than one line" in r.stderr, r.stderr
        _no_token(r.stdout, r.stderr)
    r = drop.cli("check", "-c", str(drop.config), env={**env, "SISDROPD_TOKEN": f"{TOKEN}\x1bsecond-line-SECRET"})
    assert r.returncode == 1 and "$SISDROPD_TOKEN: the token contains a control character" in r.stdout
    _no_token(r.stdout, r.stderr)
    assert not drop.sim.request_log(), "nothing was sent to Canvas with it"


@pytest.mark.parametrize("char", ["\u202e", "\u2067", "\x9b", "\u200f"])
def test_a_bidi_or_c1_character_in_a_name_cannot_reorder_or_forge_a_log_line(drop: Drop, daemon, char: str) -> None:
    """Point 9. "users<RLO>vsc.exe.csv" would show as another name; CSI (U+009B) drives terminals."""
    d = daemon()
    name = f"users{char}vsc.exe.csv"
    (drop.inbox / name).write_text(USERS)
    wait_for(lambda: "-> done/" in d.log(), what="outcome")
    log = d.log()
    assert char not in log and f"users{char.encode('unicode_escape').decode()}vsc.exe.csv" in log


def _with_warnings(drop: Drop) -> None:
    """A users file Canvas imports with a row warning (and so an errors file)."""
    (drop.inbox / "users.csv").write_text(USERS + "u3,bob,Bob,Bogus,bogus\n")


def test_no_verifier_is_stored_and_the_errors_file_is_still_saved(drop: Drop, daemon) -> None:
    """Point 9. Canvas's file URLs carry a signed verifier: anyone holding it may fetch the
    file (an errors file lists students) for an hour. No stored copy keeps it."""
    d = daemon()
    _with_warnings(drop)
    [done] = wait_for(lambda: drop.outcomes("done"), what="done")
    errors = done.with_name(done.name + ".errors.csv")
    assert errors.exists() and errors.read_text().startswith("sis_import_id,file,message,row")
    side = drop.sidecar(done)
    assert side["sis_import"]["errors_attachment"]["url"].endswith("/download?download_frd=1")
    assert d.terminate() == 0
    with sqlite3.connect(drop.state_dir / "journal.sqlite3") as db:
        stored = " ".join(str(v) for (v,) in db.execute("SELECT sis_import FROM files"))
    status = drop.cli("status", "--json", "-c", str(drop.config)).stdout
    assert "errors_attachment" in stored and "errors_attachment" in side["sis_import"]
    for text in (done.with_name(done.name + ".json").read_text(), stored, status, d.log()):
        assert "verifier=" not in text


def test_an_errors_file_past_the_limit_is_cut_and_the_outcome_stands(drop: Drop, daemon) -> None:
    """Point 2. A bigger (or endless) download is cut at canvas.max_download_bytes."""
    drop.write(canvas={"max_download_bytes": 40})
    d = daemon()
    _with_warnings(drop)
    [done] = wait_for(lambda: drop.outcomes("done"), what="done")
    wait_for(lambda: "-> done/" in d.log(), what="outcome logged")
    assert drop.sidecar(done)["workflow_state"] == "imported_with_messages" and drop.sidecar(done)["errors_file"] is None
    line = next(x for x in d.log().splitlines() if "could not save Canvas's errors file" in x)
    assert " WARNING " in line and "larger than canvas.max_download_bytes (40 bytes)" in line
    assert "verifier=" not in line
    assert [p.name for p in drop.done.iterdir() if not p.name.endswith(".json")] == [done.name]


def test_warnings_event_carries_counts_and_the_sidecar_not_the_rows(drop: Drop, daemon, tmp_path: Path) -> None:
    """Point 9. Canvas's row messages (student names in real Canvas) stay out of alerts."""
    out, script = tmp_path / "alerts.jsonl", tmp_path / "alert.py"
    script.write_text("import json, sys\nopen(sys.argv[1], 'a').write(sys.stdin.read() + '\\n')\n")
    drop.write(notify={"command": [sys.executable, str(script), str(out)], "events": ["warnings"]})
    daemon()
    _with_warnings(drop)
    [done] = wait_for(lambda: drop.outcomes("done"), what="done")
    doc = json.loads(wait_for(lambda: out.exists() and out.read_text(), what="the alert"))
    assert doc["event"] == "warnings" and doc["counts"]["warning_count"] == 1
    assert doc["sidecar"] == str(done.with_name(done.name + ".json"))
    row = drop.sidecar(done)["sis_import"]["processing_warnings"][0][1]
    assert row not in json.dumps(doc) and "warnings" not in doc


# ------------------------------------------------------------ point 3: the alert command

SNOOP = r"""
import json, os, sys
out = {"env": dict(os.environ)}
daemon = os.getppid()
for what in ("environ", "mem"):
    try:
        with open(f"/proc/{daemon}/{what}", "rb") as f:
            out[what] = f.read(1 << 16).decode("latin-1") if what == "environ" else "read"
    except OSError as e:
        out[what] = f"refused: {e.strerror}"
creds = os.environ.get("CREDENTIALS_DIRECTORY")
out["credential"] = open(os.path.join(creds, "canvas-token")).read() if creds else "no CREDENTIALS_DIRECTORY"
open(sys.argv[1], "w").write(json.dumps(out))
"""


def test_an_alert_command_cannot_read_the_token_from_the_daemon(sim, tmp_path: Path) -> None:
    """Point 3. The command runs as the daemon's user: it gets no credential path or token
    in its environment, and cannot read /proc/<daemon>/environ or mem (not dumpable).
    Run as root, daemon and command are stripped of every capability (setpriv): a root
    without CAP_SYS_PTRACE is held to the same-user rules as any service user."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "canvas-token").write_text(TOKEN)
    (creds / "canvas-token").chmod(0o400)
    script, out, cfg = tmp_path / "snoop.py", tmp_path / "snoop.json", tmp_path / "sisdropd.toml"
    script.write_text(SNOOP)
    write_config(cfg, {
        "canvas": {"base_url": sim.url, "account_id": "1", "timeout": 2, "retry_initial": 0.2, "retry_max": 1.0},
        "folders": {"root": str(tmp_path / "sisdrop")},
        "watch": {"settle_seconds": 0.3, "poll_interval": 0.3},
        "notify": {"command": [sys.executable, str(script), str(out)], "events": ["failed"]},
    })
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop the capabilities")
        prefix = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SISDROPD_", "NOTIFY_SOCKET", "JOURNAL_STREAM"))}
    env.update(CREDENTIALS_DIRECTORY=str(creds), SISDROPD_TOKEN=TOKEN, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "sisdropd", "run", "-c", str(cfg)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        inbox = tmp_path / "sisdrop" / "inbox"
        wait_for(lambda: inbox.exists() or proc.poll() is not None, what="the daemon's folders")
        assert proc.poll() is None
        (inbox / "bad.csv").write_text("not,a,sis,file\n")
        got = json.loads(wait_for(lambda: out.exists() and out.read_text(), timeout=30, what="the alert"))
    finally:
        proc.terminate()
        log = proc.communicate(timeout=15)[0].decode(errors="replace")
    assert proc.returncode == 0, log
    assert got["environ"].startswith("refused") and got["mem"].startswith("refused"), got
    assert got["credential"] == "no CREDENTIALS_DIRECTORY"
    assert "CREDENTIALS_DIRECTORY" not in got["env"] and "SISDROPD_TOKEN" not in got["env"]
    assert TOKEN not in json.dumps(got) and str(creds) not in json.dumps(got["env"]) and TOKEN not in log


# ------------------------------------------------------------ point 6: modes, any umask

BATCH_RULE = {"match": r"batch_\d+\.csv", "import": {"batch_mode": True, "batch_mode_term_id": "sis_term_id:T1"}}


def users(n: int) -> str:
    return "user_id,login_id,status\n" + "".join(f"u{i},login{i},active\n" for i in range(n))


def _modes(*tops: Path) -> dict[Path, int]:
    out = {}
    for top in tops:
        for p in (top, *top.rglob("*")):
            out[p] = stat.S_IMODE(p.lstat().st_mode)
    return out


@pytest.mark.parametrize("umask", [0o000, 0o022], ids=["umask-000", "umask-022"])
def test_every_file_and_folder_has_its_mode_whatever_the_umask(drop: Drop, tmp_path: Path, umask: int) -> None:
    """Point 6. Before: with umask 022 sidecars, errors files (student names), the journal
    and the log were world-readable and the folders listable by all."""
    srv, logdir, prom = tmp_path / "srv", tmp_path / "log", tmp_path / "prom"
    prom.mkdir()
    root = srv / "sisdrop"
    lines = drop.config.read_text().replace(f'root = "{drop.root / "sisdrop"}"', f'root = "{root}"')
    lines += f'\n[metrics]\ntextfile = "{prom / "sisdropd.prom"}"\n'
    lines += f'\n[[rules]]\nmatch = \'{BATCH_RULE["match"]}\'\n[rules.import]\nbatch_mode = true\nbatch_mode_term_id = "sis_term_id:T1"\n'
    lines = lines.replace("[log]\n", f'[log]\nfile = "{logdir / "sisdropd.log"}"\n')
    drop.config.write_text(lines)
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "sisdropd", *a, "-c", str(drop.config)], env=drop.env(), umask=umask,
        capture_output=True, text=True, timeout=60,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "sisdropd", "run", "-c", str(drop.config)], env=drop.env(), umask=umask,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )

    def put(name: str, text: str) -> None:
        """An upload as sshd's ``internal-sftp -u 0027`` leaves it (its mode is the uploader's)."""
        tmp = root / "inbox" / f".{name}.part"
        tmp.write_text(text)
        tmp.chmod(0o640)
        tmp.rename(root / "inbox" / name)

    try:
        wait_for(lambda: (logdir / "sisdropd.log").exists() and "watching" in (logdir / "sisdropd.log").read_text(), what="start")
        put("batch_1.csv", users(10))
        put("users.csv", USERS + "u3,bob,Bob,Bogus,bogus\n")  # an errors file
        put("bad.csv", "nope\n")  # failed/ and its sidecar
        wait_for(lambda: len(list((root / "done").glob("*.errors.csv"))) == 1 and len(list((root / "done").glob("*batch_1.csv"))) == 1, 30, what="done")
        put("batch_2.csv", users(5))  # held by the change guard
        wait_for(lambda: list((root / "held").glob("*.json")), 30, what="held")
        assert run("pause").returncode == 0
        assert run("status", "--json").returncode == 0
        wait_for(lambda: (prom / "sisdropd.prom").exists(), what="the textfile")
        modes = _modes(srv, logdir)
        files = {p: m for p, m in modes.items() if p.is_file()}
        names = {p.name for p in files}
        assert {"journal.sqlite3", "journal.sqlite3-wal", "journal.sqlite3-shm", "sisdropd.lock", "paused", "sisdropd.log"} <= names
        for suffix in (".errors.csv", "-bad.csv.json", "-batch_2.csv", "-batch_2.csv.json"):
            assert any(n.endswith(suffix) for n in names), suffix
        for p, m in files.items():
            assert m & 0o137 == 0, f"{p}: {m:04o}, not 0640 or stricter"
        for p, m in modes.items():
            if p.is_dir():
                assert m == (0o700 if p.name == ".sisdropd" else 0o750), f"{p}: {m:04o}"
        assert stat.S_IMODE((prom / "sisdropd.prom").stat().st_mode) == 0o644, "node-exporter reads it"
    finally:
        proc.terminate()
        proc.wait(15)


def test_run_detach_makes_its_folders_after_setting_its_umask(drop: Drop, tmp_path: Path) -> None:
    """Point 6. ``run --detach`` made the folders before python-daemon set its umask."""
    root = tmp_path / "fresh"
    drop.write(folders={"root": str(root)}, log={"file": str(tmp_path / "d.log")})
    pidfile = tmp_path / "d.pid"
    r = subprocess.run(
        [sys.executable, "-m", "sisdropd", "run", "--detach", "--pidfile", str(pidfile), "-c", str(drop.config)],
        env=drop.env(), umask=0, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the pid file"))
    log = tmp_path / "d.log"
    try:
        # The pid file comes first; the folders, the journal and the lock only by "watching".
        wait_for(lambda: log.exists() and "watching" in log.read_text(), what="'watching' in the log")
        for p, m in _modes(root).items():
            assert m == (0o700 if p.name == ".sisdropd" else 0o750) or p.is_file() and m & 0o137 == 0, f"{p}: {m:04o}"
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not pidfile.exists(), what="the detached daemon to stop")


def test_check_says_what_the_modes_leave_open(drop: Drop, tmp_path: Path) -> None:
    """Point 6. An inbox the daemon makes is 0750: uploaders cannot write there until the
    admin applies the README's 3770; anything world-readable is named."""
    root = tmp_path / "fresh"
    drop.write(folders={"root": str(root)})
    r = drop.cli("check", "-c", str(drop.config))
    assert r.returncode == 0 and f"warning: inbox {root / 'inbox'} will be made 0750: uploaders cannot write there" in r.stdout
    assert "chmod 3770" in r.stdout
    for name in ("inbox", "done"):
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "inbox").chmod(0o2770)
    (root / "done" / "x-users.csv.json").write_text("{}")
    (root / "done" / "x-users.csv.json").chmod(0o644)
    (root / "done").chmod(0o755)
    r = drop.cli("check", "-c", str(drop.config))
    out = r.stdout
    assert "without the sticky bit, one uploader can delete or replace another's file" in out
    assert f"warning: done {root / 'done'} is 0755: open to all users" in out
    assert "warning: done: 1 readable by all users (x-users.csv.json)" in out
    (root / "inbox").chmod(0o3770)
    (root / "done").chmod(0o750)
    (root / "done" / "x-users.csv.json").chmod(0o640)
    r = drop.cli("check", "-c", str(drop.config))
    assert "warning: inbox" not in r.stdout and "warning: done" not in r.stdout, r.stdout
