"""Safe file operations: durable renames, moves that never overwrite, atomic writes, hashes.

``move`` never overwrites and survives a crash at any instant (one atomic
``renameat2(RENAME_NOREPLACE)`` where Linux offers it, else a hard link then an unlink;
copy, fsync, verify, then unlink across filesystems; a crash after the copy is finished
only when the copy is verifiably the file the journal holds). ``write_atomic`` writes all or nothing.
``sha256_of`` reads a regular file without following a symbolic link. Nothing here knows
our folders or our records.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any

from sisdropd.crashpoint import crashpoint


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


class MoveConflict(FileExistsError):
    """``dst`` exists and is not verifiably the copy of ``src``: both are kept, untouched."""

    def __init__(self, src: Path, dst: Path, why: str) -> None:
        super().__init__(errno.EEXIST, f"{src} and {dst} are two different files ({why}); both are kept", str(dst))
        self.src, self.dst, self.why = src, dst, why


def move(src: Path, dst: Path, *, expect: tuple[int | None, str | None] | None = None) -> None:
    """Move ``src`` to ``dst`` without ever overwriting ``dst``; durable when it returns.

    Idempotent: if a crash left the file at both names, calling again finishes the move.
    Both names on one inode (a crash between link and unlink): the source name goes. A
    separate copy at ``dst`` (a move across filesystems stopped after the copy, before the
    source was unlinked): the source is unlinked only when that copy has the size and
    SHA-256 in ``expect`` (what the journal holds for this file); otherwise, or without
    ``expect``, ``MoveConflict`` names both and both are kept. The source is never unlinked
    unverified. Across filesystems a FIFO (it holds no bytes) is made again at ``dst``; a
    socket or device is not carried over (its record says what it was).

    Raises ``MoveConflict`` (a ``FileExistsError``), ``FileNotFoundError`` if ``src`` is gone
    and ``dst`` absent, OSError for other failures.
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
            _unlink_durably(src)  # a crash between link and unlink
            return
        _finish_copied(src, dst, s, d, expect)
        return
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
    _unlink_durably(src)


def _unlink_durably(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fsync_dir(path.parent)


def _finish_copied(src: Path, dst: Path, s: os.stat_result, d: os.stat_result, expect: tuple[int | None, str | None] | None) -> None:
    """A separate file at ``dst``: unlink ``src`` if ``dst`` is verifiably its copy, else MoveConflict."""
    if stat.S_ISREG(s.st_mode):
        size, digest = expect or (None, None)
        if not stat.S_ISREG(d.st_mode):
            raise MoveConflict(src, dst, "the destination is not a regular file")
        if size is None or not digest:
            raise MoveConflict(src, dst, "the journal holds no size and SHA-256 to check the copy against")
        if d.st_size != size:
            raise MoveConflict(src, dst, f"the destination has {d.st_size} bytes, the journal says {size}")
        if sha256_of(dst) != digest:
            raise MoveConflict(src, dst, "the destination's SHA-256 is not the one the journal holds")
    elif stat.S_IFMT(s.st_mode) != stat.S_IFMT(d.st_mode) or (
        stat.S_ISLNK(s.st_mode) and os.readlink(src) != os.readlink(dst)
    ):
        raise MoveConflict(src, dst, "the destination is another kind of file")
    _unlink_durably(src)


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


def _place(tmp: Path, dst: Path) -> None:
    """Give ``tmp`` the name ``dst`` (same folder) without replacing anything; FileExistsError if taken."""
    if _rename_noreplace(tmp, dst):
        return
    os.link(tmp, dst, follow_symlinks=False)  # FileExistsError if dst exists
    os.unlink(tmp)


def _copy_then_unlink(src: Path, dst: Path, s: os.stat_result) -> None:
    """Across filesystems: copy to a temporary name, fsync, verify, name it ``dst``, then unlink.

    The copy is read back and its SHA-256 compared with the bytes read from ``src`` before
    anything is unlinked. Another mover that got there first (its copy already at ``dst``)
    is accepted only if its copy is verifiably the same.
    """
    tmp = dst.with_name(f".sisdropd-{secrets.token_hex(8)}.tmp")  # short: the real name may be 255 bytes
    expect: tuple[int | None, str | None] | None = None
    try:
        if stat.S_ISLNK(s.st_mode):
            os.symlink(os.readlink(src), tmp)
        elif stat.S_ISREG(s.st_mode):
            h = hashlib.sha256()
            size = 0
            with open(src, "rb") as fin, open(tmp, "xb") as fout:
                while chunk := fin.read(1 << 20):
                    h.update(chunk)
                    fout.write(chunk)
                    size += len(chunk)
                fout.flush()
                os.fsync(fout.fileno())
            shutil.copystat(src, tmp)
            expect = (size, h.hexdigest())
            if sha256_of(tmp) != expect[1]:
                raise OSError(errno.EIO, "the copy reads back different from the source", str(tmp))
        elif stat.S_ISFIFO(s.st_mode):
            os.mkfifo(tmp, stat.S_IMODE(s.st_mode))  # a FIFO holds no bytes: make it again
        else:
            _unlink_durably(src)  # a socket or device holds no bytes and cannot be made again here
            return
        try:
            _place(tmp, dst)
        except FileExistsError:
            d = os.lstat(dst)
            _finish_copied(src, dst, s, d, expect)  # another mover's copy: only if it is the same
            return
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(dst.parent)
    crashpoint("copied")
    _unlink_durably(src)


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


def sha256_of(path: Path) -> str:
    """SHA-256 of a regular file, read without following a symbolic link.

    Raises OSError when ``path`` is a link, a FIFO or another non-regular file (never opened
    for reading: a FIFO would block), or cannot be read.
    """
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path.name} is not a regular file")
    with os.fdopen(fd, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256_or_none(path: Path) -> str | None:
    """``sha256_of``, or None for a link, FIFO or unreadable file (never read)."""
    try:
        return sha256_of(path)
    except OSError:
        return None
