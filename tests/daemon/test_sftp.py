"""Real SFTP uploads into the drop folder: OpenSSH's sshd (chrooted internal-sftp) and its
sftp and scp clients, against a real ``sisdropd run`` and the simulator.

What a user checks after each upload: the file in done/ byte-identical to what was sent,
exactly one import in Canvas (of those bytes), nothing left in inbox/ or processing/. An
upload cut off half way must never be posted as if it were whole.

About ``sftp -l``: the client sleeps once per write request to keep to the limit, and
OpenSSH >= 8.7 writes in requests of 255 KiB (the server's ``limits@openssh.com``), so the
file grows in 255 KiB steps with pauses of 255 KiB * 8 / limit between them: 0.42 s at
5000 Kbit/s, but 1.0 s at 2000 Kbit/s, longer than a settle time of 1 s. The limits used
here keep the pauses well under ``settle_seconds`` (test 1 measures them).
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import time
import zipfile
from pathlib import Path

import pytest

from tests.support import USERS, Drop, holds, wait_for

from .sshd import SSHServer, _alive, sshd_fixture  # noqa: F401 - the fixture `sshd`

SETTLE = 1.0
TRUNCATED_AFTER = 4.0
LIMIT = 5000  # Kbit/s: ~3 MB in ~5 s, pauses of ~0.42 s between 255 KiB writes
HEADER = b"user_id,login_id,first_name,last_name,status\n"  # 45 bytes
ROW = 64  # every row is 64 bytes: see big_users_csv


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def big_users_csv(size: int) -> bytes:
    """A users CSV of about ``size`` bytes, every row exactly 64 bytes long.

    The header is 45 bytes, so a row ends at an offset = 45 (mod 64), never at a multiple
    of 64. SFTP writes (and so a cut-off upload) end at multiples of the request size, a
    multiple of 64: a cut-off copy of this file can never end on a complete row.
    """
    rows = []
    for i in range((size - len(HEADER)) // ROW):
        row = f"u{i:07d},login{i:07d},Ada{i:07d},Lovelace,active\n"
        row = row.replace("Lovelace", "Lovelace".ljust(8 + ROW - len(row), "e"))
        rows.append(row)
    data = HEADER + "".join(rows).encode()
    assert all(len(r) == ROW for r in rows) and len(HEADER) % ROW
    return data


def stored_zip(csv: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("users.csv", csv)
    return buf.getvalue()


@pytest.fixture
def sdrop(drop: Drop, sshd: SSHServer) -> Drop:
    """The drop folder whose inbox is the SFTP account's /inbox."""
    drop.write(folders={"inbox": str(sshd.inbox)}, watch={"settle_seconds": SETTLE})
    drop.inbox = sshd.inbox
    return drop


def local(tmp_path: Path, name: str, data: bytes) -> Path:
    src = tmp_path / "outgoing" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(data)
    return src


def taken_once_whole(drop: Drop, name: str, data: bytes) -> Path:
    """The user's checks: in done/, same bytes, one import of those bytes, inbox/ and processing/ empty."""
    [done] = wait_for(lambda: drop.outcomes("done"), timeout=30, what=f"{name} in done/")
    wait_for(lambda: not list(drop.processing.iterdir()), what="processing/ empty")
    assert done.name.endswith(f"-{name}") and done.read_bytes() == data
    side = drop.sidecar(done)
    assert (
        side["original_name"] == name and side["size"] == len(data) and side["sha256"] == sha(data)
    )
    [imp] = drop.sim.imports()
    assert (imp["sha256"], imp["size"], imp["id"]) == (sha(data), len(data), side["import_id"])
    assert list(drop.inbox.iterdir()) == [] and drop.outcomes("failed") == []
    return done


def truncated_lines(log: str, name: str) -> list[str]:
    return [line for line in log.splitlines() if name in line and "looks truncated" in line]


def interrupt_upload(sshd: SSHServer, src: Path, name: str) -> tuple[bytes, float]:
    """Start a throttled ``sftp put``, SIGKILL the client part way, wait for sshd to close the file.

    Returns the bytes left under the final name and the wall time of their last change.
    """
    total = src.stat().st_size
    target = sshd.inbox / name
    client = sshd.sftp_popen(f"put {src} {name}", limit_kbps=LIMIT)
    try:
        wait_for(
            lambda: client.poll() is not None or (target.exists() and target.stat().st_size >= total // 4),
            timeout=20, what="a quarter of the upload",
        )  # fmt: skip
        assert client.poll() is None, "the upload ended before it could be interrupted"
        client.send_signal(signal.SIGKILL)
    finally:
        client.kill()
        client.wait(10)
    sshd.wait_idle()  # the server saw the connection drop and closed the file
    partial = target.read_bytes()
    assert 0 < len(partial) < total, (len(partial), total)
    print(
        f"\n{name}: upload killed at {len(partial)} of {total} bytes ({100 * len(partial) // total}%)"
    )
    return partial, target.stat().st_mtime


# -- complete uploads ----------------------------------------------------------------------


def test_throttled_sftp_put_is_taken_once_whole(
    sdrop: Drop, sshd: SSHServer, daemon, tmp_path: Path
) -> None:
    daemon()
    data = big_users_csv(3_000_000)
    src = local(tmp_path, "users.csv", data)
    target = sdrop.inbox / "users.csv"
    t0 = time.monotonic()
    client = sshd.sftp_popen(f"put {src} users.csv", limit_kbps=LIMIT)
    changes: list[tuple[float, int]] = []
    while client.poll() is None:  # watch the file grow, as the daemon does
        try:
            size = target.stat().st_size
        except FileNotFoundError:
            size = -1
        if not changes or changes[-1][1] != size:
            changes.append((time.monotonic(), size))
        assert sdrop.sim.imports() == [], "posted while the upload was still running"
        time.sleep(0.01)
    took = time.monotonic() - t0
    assert client.returncode == 0
    gaps = [b[0] - a[0] for a, b in zip(changes, changes[1:], strict=False)]
    print(
        f"\nsftp -l {LIMIT}: {len(data)} bytes in {took:.1f}s, {len(changes)} sizes seen, longest pause {max(gaps):.2f}s"
    )
    assert took > 3 and max(gaps) < SETTLE, "the throttle does not test what it should"
    taken_once_whole(sdrop, "users.csv", data)


def test_upload_to_temporary_name_then_rename_is_taken_once(
    sdrop: Drop, sshd: SSHServer, daemon, tmp_path: Path
) -> None:
    daemon()
    data = big_users_csv(1_000_000)
    src = local(tmp_path, "users.csv", data)
    # ~1.6 s under the temporary name: longer than settle, and it must be left alone meanwhile.
    sshd.sftp(
        f"put {src} users.csv.filepart\nrename users.csv.filepart users.csv", limit_kbps=LIMIT
    )
    taken_once_whole(sdrop, "users.csv", data)


def test_batch_of_files_in_one_session_imported_in_mtime_order(
    sdrop: Drop, sshd: SSHServer, daemon, tmp_path: Path
) -> None:
    daemon()
    files = {  # oldest first, which is not name order
        "b.csv": b"course_id,short_name,long_name,status\nC1,C1,Course 1,active\n",
        "c.csv": b"section_id,course_id,name,status\nS1,C1,Section 1,active\n",
        "a.csv": USERS.encode(),
    }
    srcs = {name: local(tmp_path, name, data) for name, data in files.items()}
    for i, src in enumerate(srcs.values()):
        os.utime(src, (1_790_000_000 + 60 * i,) * 2)
    # put -p keeps the export's times, as WinSCP and most SIS jobs do: without it three
    # files written within one kernel tick (~4 ms) share an mtime and go by name.
    sshd.sftp("\n".join(f"put -p {srcs[name]} {name}" for name in files))
    wait_for(lambda: len(sdrop.outcomes("done")) == 3, timeout=30, what="all three in done/")
    wait_for(lambda: not list(sdrop.processing.iterdir()), what="processing/ empty")
    done = sdrop.outcomes("done")
    by_import = sorted(done, key=lambda p: sdrop.sidecar(p)["import_id"])
    assert [sdrop.sidecar(p)["original_name"] for p in by_import] == list(files)
    assert [p.stat().st_mtime for p in by_import] == [s.stat().st_mtime for s in srcs.values()]
    imports = sdrop.sim.imports()
    assert [i["sha256"] for i in imports] == [sha(d) for d in files.values()]
    for p in done:
        side = sdrop.sidecar(p)
        data = files[side["original_name"]]
        assert p.read_bytes() == data and side["sha256"] == sha(data) and side["size"] == len(data)
    assert list(sdrop.inbox.iterdir()) == [] and sdrop.outcomes("failed") == []


def test_scp_is_taken_once_whole(sdrop: Drop, sshd: SSHServer, daemon, tmp_path: Path) -> None:
    daemon()
    data = big_users_csv(1_000_000)
    sshd.scp(local(tmp_path, "users.csv", data), "users.csv", limit_kbps=LIMIT)
    taken_once_whole(sdrop, "users.csv", data)


# -- interrupted uploads (needs [watch] truncated_after) ------------------------------------


def test_interrupted_csv_upload_waits_then_full_reupload_is_taken_once(
    sdrop: Drop, sshd: SSHServer, daemon, tmp_path: Path
) -> None:
    sdrop.write(watch={"truncated_after": TRUNCATED_AFTER})
    d = daemon()
    data = big_users_csv(3_000_000)
    src = local(tmp_path, "users.csv", data)
    partial, mtime = interrupt_upload(sshd, src, "users.csv")
    wait_for(
        lambda: truncated_lines(d.log(), "users.csv"),
        timeout=10,
        what="'looks truncated' in the log",
    )
    noticed = time.time() - mtime
    # A waiting file is judged again every max(1 s, settle) and says nothing when it still
    # waits, so a bounded wait shows it: within SETTLE * 1.2 it was checked again, not taken.
    holds(
        lambda: sdrop.sim.imports() == []
        and (sdrop.inbox / "users.csv").read_bytes() == partial
        and not list(sdrop.processing.iterdir()),
        SETTLE * 1.2,
        what="the cut-off file waits in the inbox, not posted",
    )
    assert len(truncated_lines(d.log(), "users.csv")) == 1, "one log line, not one per check"
    # The SIS retries: the whole file again, same name, as slowly (longer than truncated_after).
    t0 = time.monotonic()
    sshd.sftp(f"put {src} users.csv", limit_kbps=LIMIT)
    reupload = time.monotonic() - t0
    taken_once_whole(sdrop, "users.csv", data)
    print(
        f"users.csv: 'looks truncated' {noticed:.1f}s after its last write; re-upload took {reupload:.1f}s; done {time.time() - mtime:.1f}s after the cut"
    )


def test_interrupted_csv_upload_left_alone_goes_to_failed(
    sdrop: Drop, sshd: SSHServer, daemon, tmp_path: Path
) -> None:
    sdrop.write(watch={"truncated_after": TRUNCATED_AFTER})
    d = daemon()
    src = local(tmp_path, "users.csv", big_users_csv(3_000_000))
    partial, mtime = interrupt_upload(sshd, src, "users.csv")
    wait_for(
        lambda: truncated_lines(d.log(), "users.csv"),
        timeout=10,
        what="'looks truncated' in the log",
    )
    noticed = time.time() - mtime
    assert sdrop.sim.imports() == [] and sdrop.outcomes("failed") == []
    [failed] = wait_for(
        lambda: sdrop.outcomes("failed"), timeout=TRUNCATED_AFTER + 10, what="users.csv in failed/"
    )
    waited = time.time() - mtime
    side = sdrop.sidecar(failed)
    print(
        f"users.csv: 'looks truncated' {noticed:.1f}s after its last write; failed/ {waited:.1f}s after it; reason: {side['reason']}"
    )
    assert waited >= TRUNCATED_AFTER - 0.1, "gave up before truncated_after"
    assert (
        failed.read_bytes() == partial
        and side["size"] == len(partial)
        and side["sha256"] == sha(partial)
    )
    assert (
        "looks truncated" in side["reason"]
        and side["import_id"] is None
        and side["sis_import"] is None
    )
    assert sdrop.sim.imports() == [] and sdrop.outcomes("done") == []
    assert list(sdrop.inbox.iterdir()) == [] and not list(sdrop.processing.iterdir())


def test_interrupted_zip_upload_is_never_posted(
    sdrop: Drop, sshd: SSHServer, daemon, tmp_path: Path
) -> None:
    sdrop.write(watch={"truncated_after": TRUNCATED_AFTER})
    d = daemon()
    data = stored_zip(big_users_csv(3_000_000))
    src = local(tmp_path, "users.zip", data)
    partial, mtime = interrupt_upload(sshd, src, "users.zip")
    wait_for(
        lambda: truncated_lines(d.log(), "users.zip"),
        timeout=10,
        what="'looks truncated' in the log",
    )
    print(f"users.zip: 'looks truncated' {time.time() - mtime:.1f}s after its last write")
    assert sdrop.sim.imports() == [], "the cut-off zip was posted"
    assert (sdrop.inbox / "users.zip").read_bytes() == partial and sdrop.finished() == []
    sshd.sftp(f"put {src} users.zip")  # the retry, at full speed
    taken_once_whole(sdrop, "users.zip", data)


# -- marker files (needs [watch] marker) ----------------------------------------------------


def test_marker_file_releases_the_upload(
    sdrop: Drop, sshd: SSHServer, daemon, tmp_path: Path
) -> None:
    # A rescan would find the marker eventually; the marker's own arrival must be enough.
    sdrop.write(watch={"marker": ".ok", "rescan_interval": 60})
    d = daemon()
    data = big_users_csv(200_000)
    src = local(tmp_path, "users.csv", data)
    marker = local(tmp_path, "users.csv.ok", b"")
    sshd.sftp(f"put {src} users.csv")
    # Settled, complete, and still not taken without its marker. A file passed over for its
    # marker leaves no trace, so a bounded wait shows it: SETTLE * 1.5 after the upload.
    holds(
        lambda: [p.name for p in sdrop.inbox.iterdir()] == ["users.csv"]
        and sdrop.sim.imports() == []
        and not list(sdrop.processing.iterdir()),
        SETTLE * 1.5,
        what="users.csv waits for its marker",
    )
    t0 = time.monotonic()
    sshd.sftp(f"put {marker} users.csv.ok")
    wait_for(
        lambda: "users.csv: taken" in d.log(), timeout=3,  # < the daemon's 5 s tick: the marker itself must wake the watcher
        what="users.csv taken once its marker arrived (not at the next rescan)",
    )  # fmt: skip
    print(f"\nusers.csv: taken {time.monotonic() - t0:.1f}s after its marker arrived")
    taken_once_whole(sdrop, "users.csv", data)  # which also finds inbox/ empty: the marker is gone
    assert not (sdrop.inbox / "users.csv.ok").exists()


def test_sshd_fixture_chroots_and_leaves_no_process(sshd: SSHServer, tmp_path: Path) -> None:
    """The fixture itself: the client sees only the jail, and stopping sshd ends its sessions."""
    r = sshd.sftp("pwd\nls -la /")
    if sshd.chroot_dir:
        assert "Remote working directory: /inbox" in r.stdout
        assert "etc" not in r.stdout.split(), "/ is the jail, not the host's root"
    (sshd.inbox / "x.csv").write_text(USERS)
    assert "x.csv" in sshd.sftp("ls").stdout
    src = local(tmp_path, "slow.csv", b"x" * 100_000)
    hold = sshd.sftp_popen(f"put {src} slow.csv", limit_kbps=8)  # a session that stays open
    wait_for(lambda: sshd.sessions(), what="an open session")
    pids = [sshd.proc.pid, *sshd.sessions()]
    sshd.stop()
    assert hold.wait(10) != 0
    assert not any(_alive(p) for p in pids)
