"""A real OpenSSH server on 127.0.0.1 for the SFTP tests, and its clients (sftp, scp).

The ``sshd`` fixture starts ``/usr/sbin/sshd -D -e -f <tmp>/sshd_config`` on a free
loopback port with a throwaway ed25519 host key and user key, key login only, and the
SFTP server built into sshd (``internal-sftp``). Running as root (the tests do), the login
is chrooted the way an SIS drop account is set up in production::

    ChrootDirectory <root-owned dir>
    ForceCommand internal-sftp -d /inbox

so the client sees ``/inbox`` as its starting directory and nothing else. sshd insists
that every component of the ChrootDirectory path is a root-owned directory writable by
no one else, which ``/tmp`` (mode 1777, where pytest's tmp_path lives) is not; the files
stay in tmp_path (one filesystem with the drop folder) and sshd is pointed at them
through a symbolic link in ``/run`` (root-owned, 0755), removed at teardown. sshd checks
each component with stat(2), which follows that link.

Not root: no chroot (sshd cannot chroot), the current user logs in and ``-d`` starts
the session in the inbox instead. sshd missing: the tests are skipped (``.ci/run``
installs ``openssh-server openssh-client``).
"""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
CLIENT_OPTS = [
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
    "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(d))
    return kids


def _descendants(pid: int) -> list[int]:
    out = []
    for k in _children(pid):
        out += [k, *_descendants(k)]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class SSHServer:
    """One sshd, its keys and config in ``base``; ``inbox`` is where uploads land."""

    def __init__(self, base: Path, *, chroot: bool) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.user = "root" if os.geteuid() == 0 else getpass.getuser()
        self.host_key = base / "ssh_host_ed25519_key"
        self.user_key = base / "id_ed25519"
        self.config = base / "sshd_config"
        self.pidfile = base / "sshd.pid"
        self.log_path = base / "sshd.log"
        self.link: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        for key in (self.host_key, self.user_key):
            subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "sisdropd-test",
                    "-f",
                    str(key),
                ],
                check=True,
                stdin=subprocess.DEVNULL,
            )
        (base / "authorized_keys").write_text(self.user_key.with_suffix(".pub").read_text())
        if chroot:
            # The jail: root-owned, 0755, not writable by the client; the inbox inside it is.
            jail = base / "jail"
            jail.mkdir(mode=0o755)
            jail.chmod(0o755)
            self.inbox = jail / "inbox"
            self.inbox.mkdir()
            self.link = Path("/run") / f"sisdropd-test-sftp-{os.getpid()}-{secrets.token_hex(4)}"
            self.link.symlink_to(jail)
            self.start_dir = "/inbox"  # as the client sees it
            self.chroot_dir: str | None = str(self.link)
        else:
            self.inbox = base / "inbox"
            self.inbox.mkdir()
            self.start_dir = str(self.inbox)
            self.chroot_dir = None

    def sshd_config(self, port: int) -> str:
        lines = [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.pidfile}",
            f"AuthorizedKeysFile {self.base / 'authorized_keys'}",
            f"AllowUsers {self.user}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",  # tmp_path's owners and modes are not sshd's business here
            "UseDNS no",
            "AllowTcpForwarding no",
            "X11Forwarding no",
            "PermitTTY no",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
            f"ForceCommand internal-sftp -d {self.start_dir}",
        ]
        if self.chroot_dir:
            lines.append(f"ChrootDirectory {self.chroot_dir}")
        return "\n".join(lines) + "\n"

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if os.geteuid() == 0:
            # sshd's privilege-separation directory (Debian's unit makes it at boot).
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for _attempt in range(5):
            self.port = _free_port()
            self.config.write_text(self.sshd_config(self.port))
            log = open(self.log_path, "ab")  # noqa: SIM115 - closed right after Popen
            try:
                self.proc = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(self.config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            finally:
                log.close()
            if self._wait_listening():
                return
            self.proc.wait(5)  # it exited: most likely the port was taken meanwhile; try another
        raise RuntimeError(f"sshd did not start:\n{self.log()}")

    def _wait_listening(self, timeout: float = 10.0) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-2.0-"):  # the banner: sshd itself answered
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def sessions(self) -> list[int]:
        """sshd's per-connection processes still alive (children of the listener)."""
        return [p for p in _children(self.proc.pid) if _alive(p)] if self.proc else []

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every connection's sshd process has exited (its files are closed)."""
        deadline = time.monotonic() + timeout
        while self.sessions():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"sshd sessions still open after {timeout}s: {self.sessions()}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the sessions and the listener (by pid); fail if any of them is left."""
        try:
            if self.proc is not None:
                pid = self.proc.pid
                if self.pidfile.exists():
                    assert int(self.pidfile.read_text().split()[0]) == pid, (
                        "sshd's PidFile names another process"
                    )
                kids = _descendants(pid)
                for k in reversed(kids):  # the sessions first, while the listener still reaps them
                    try:
                        os.kill(k, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
                deadline = time.monotonic() + 5
                while any(_alive(k) for k in kids) and time.monotonic() < deadline:
                    time.sleep(0.02)
                leaked = [k for k in [pid, *kids] if _alive(k)]
                assert not leaked, f"sshd processes left running: {leaked}"
        finally:
            self.proc = None
            if self.link is not None:
                self.link.unlink(missing_ok=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- clients ----------------------------------------------------------------------------
    def sftp_argv(
        self, batch: str, *, limit_kbps: int | None = None, buffer: int | None = None
    ) -> list[str]:
        batchfile = self.base / f"batch-{time.monotonic_ns()}.txt"
        batchfile.write_text(batch.strip() + "\n")
        argv = [
            "sftp",
            "-b",
            str(batchfile),
            "-i",
            str(self.user_key),
            "-P",
            str(self.port),
            *CLIENT_OPTS,
        ]
        if limit_kbps:
            argv += ["-l", str(limit_kbps)]
        if buffer:
            argv += ["-B", str(buffer)]
        return [*argv, f"{self.user}@127.0.0.1"]

    def sftp(
        self,
        batch: str,
        *,
        limit_kbps: int | None = None,
        buffer: int | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run an sftp batch (one command a line) to the end; fail the test if it fails."""
        r = subprocess.run(
            self.sftp_argv(batch, limit_kbps=limit_kbps, buffer=buffer),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        assert r.returncode == 0, (
            f"sftp failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n--- sshd log ---\n{self.log()}"
        )
        return r

    def sftp_popen(
        self, batch: str, *, limit_kbps: int | None = None, buffer: int | None = None
    ) -> subprocess.Popen[bytes]:
        """Start an sftp batch in the background (to interrupt it)."""
        return subprocess.Popen(
            self.sftp_argv(batch, limit_kbps=limit_kbps, buffer=buffer),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def scp(
        self, local: Path, remote: str, *, limit_kbps: int | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``scp local user@host:remote`` (OpenSSH 9 scp speaks SFTP, so ForceCommand internal-sftp serves it)."""
        argv = ["scp", "-q", "-i", str(self.user_key), "-P", str(self.port), *CLIENT_OPTS]
        if limit_kbps:
            argv += ["-l", str(limit_kbps)]
        argv += [str(local), f"{self.user}@127.0.0.1:{remote}"]
        r = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        assert r.returncode == 0, (
            f"scp failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n--- sshd log ---\n{self.log()}"
        )
        return r


def _chroot_possible() -> bool:
    run = Path("/run")
    if os.geteuid() != 0 or not run.is_dir():
        return False
    st = run.stat()
    return st.st_uid == 0 and not st.st_mode & 0o022


@pytest.fixture(name="sshd")
def sshd_fixture(tmp_path: Path) -> Iterator[SSHServer]:
    """A running sshd (chrooted SFTP into ``.inbox`` when root); stopped, with its sessions, at teardown."""
    missing = [
        t
        for t in (SSHD, "sftp", "scp", "ssh-keygen")
        if not (os.access(t, os.X_OK) if t.startswith("/") else shutil.which(t))
    ]
    if missing:
        pytest.skip(
            f"OpenSSH not installed ({', '.join(missing)} missing): apt-get install -y openssh-server openssh-client"
        )
    server = SSHServer(tmp_path / "sshd", chroot=_chroot_possible())
    try:
        server.start()
        yield server
    finally:
        server.stop()
