"""Safe file operations: durable renames, moves that never overwrite, atomic writes, hashes.

``move`` never overwrites and survives a crash at any instant (one atomic
``renameat2(RENAME_NOREPLACE)`` where Linux offers it, else a hard link then an unlink;
copy, fsync, then unlink across filesystems). ``write_atomic`` writes all or nothing.
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
