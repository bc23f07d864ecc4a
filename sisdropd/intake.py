"""Files on disk: which inbox entries count, their names in our folders, and safe moves.

``eligible`` is the contract's point 1 (what in inbox/ is ours). ``stored_name`` gives a
taken file the name it keeps in processing/, done/ and failed/: a UTC timestamp and a
random tag before the original name, so the name ends with the original, sorts by time,
and never collides. ``move`` never overwrites and survives a crash at any instant (one atomic
``renameat2(RENAME_NOREPLACE)`` where Linux offers it, else a hard link then an unlink;
copy, fsync, then unlink across filesystems).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TEMP_SUFFIXES = (".part", ".filepart", ".tmp", ".partial")
NAME_MAX = 255  # bytes, the usual filesystem limit for one name
ROOM = len(".errors.csv")  # what the sidecar and errors file add to a stored name
_STORED = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}-(?P<orig>.+)$", re.S)


def eligible(name: str, extensions: tuple[str, ...] | list[str]) -> bool:
    """True when an inbox entry named ``name`` is one we take (by name alone).

    Hidden names, temporary upload names (``*.part``, ``*.filepart``, ``*.tmp``,
    ``*.partial``, ``*~``) and other extensions are left alone.
    """
    if not name or name.startswith(".") or name.endswith("~"):
        return False
    lower = name.lower()
    if lower.endswith(TEMP_SUFFIXES):
        return False
    ext = lower.rsplit(".", 1)[-1] if "." in lower else ""
    return ext in {e.lower() for e in extensions}


def stored_name(original: str, now: datetime | None = None) -> str:
    """``<UTC timestamp>-<6 hex>-<original>``, short enough that it and its sidecar fit.

    The name ends with the original name; when the original is too long for a prefix,
    the prefix shrinks to the random tag; an original longer than the filesystem allows
    beside its ``.errors.csv`` keeps its last bytes only.
    """
    when = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    tag = secrets.token_hex(3)
    for prefix in (f"{when}-{tag}-", f"{tag}-"):
        candidate = prefix + original
        if len(os.fsencode(candidate)) <= NAME_MAX - ROOM:
            return candidate
    # Too long to keep whole beside its sidecar: keep its end (the extension included);
    # the sidecar's original_name has it in full.
    raw = os.fsencode(original)[-(NAME_MAX - ROOM - len(tag) - 1) :]
    while raw and 0x80 <= raw[0] <= 0xBF:  # do not start inside a UTF-8 character
        raw = raw[1:]
    return f"{tag}-{os.fsdecode(raw)}"


def original_name(stored: str) -> str:
    """The dropped name inside a stored name (the whole name if it carries no prefix)."""
    m = _STORED.match(stored)
    return m.group("orig") if m else stored


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def move(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` without ever overwriting ``dst``; durable when it returns.

    Idempotent: if a crash left the file at both names (same inode, or a complete copy
    recorded by the caller), calling again finishes the move. Raises ``FileExistsError``
    if ``dst`` is another file, ``FileNotFoundError`` if ``src`` is gone and ``dst`` absent.
    """
    try:
        s = os.lstat(src)
    except FileNotFoundError:
        if os.path.lexists(dst):
            return  # already moved
        raise
    try:
        d = os.lstat(dst)
    except FileNotFoundError:
        d = None
    if d is not None:
        if (d.st_ino, d.st_dev) == (s.st_ino, s.st_dev):
            os.unlink(src)  # a crash between link and unlink
            fsync_dir(src.parent)
            return
        raise FileExistsError(errno.EEXIST, "destination exists and is another file", str(dst))
    if _rename_noreplace(src, dst):
        fsync_dir(dst.parent)
        fsync_dir(src.parent)
        return
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        _copy_then_unlink(src, dst, s)
        return
    fsync_dir(dst.parent)
    os.unlink(src)
    fsync_dir(src.parent)


def _load_renameat2() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1


def _rename_noreplace(src: Path, dst: Path) -> bool:
    """One atomic rename that fails rather than overwrite (Linux renameat2).

    Returns False when the system or filesystem cannot do it (then link + unlink is used);
    raises FileExistsError if ``dst`` exists, OSError for other failures.
    """
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EXDEV):
        return False  # not supported here, or another filesystem: the slower paths handle it
    raise OSError(err, os.strerror(err), str(dst))


def _copy_then_unlink(src: Path, dst: Path, s: os.stat_result) -> None:
    """Across filesystems: copy to a temporary name, fsync, rename into place, then unlink."""
    tmp = dst.with_name(f".sisdropd-{secrets.token_hex(8)}.tmp")  # short: the real name may be 255 bytes
    if stat.S_ISLNK(s.st_mode):
        os.symlink(os.readlink(src), tmp)
    elif stat.S_ISREG(s.st_mode):
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, tmp)
    else:
        raise OSError(errno.EXDEV, "cannot copy a special file across filesystems", str(src))
    if os.path.lexists(dst):
        os.unlink(tmp)
        raise FileExistsError(errno.EEXIST, "destination exists and is another file", str(dst))
    os.rename(tmp, dst)
    fsync_dir(dst.parent)
    os.unlink(src)
    fsync_dir(src.parent)


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync, rename: all or nothing.

    ``mode`` sets the file's permissions (else the umask decides). Raises OSError; the
    temporary file is removed when anything fails.
    """
    tmp = path.with_name(f".sisdropd-{secrets.token_hex(8)}.tmp")  # short: the real name may be 255 bytes
    try:
        with open(tmp, "xb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
