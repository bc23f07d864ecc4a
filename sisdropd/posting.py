"""Posting a file so that the bytes Canvas gets are exactly the bytes that were checked.

The daemon's QUEUED step and ``sisdropd submit`` both post through an ``Outgoing``:

1. ``Outgoing.open`` opens the file once, without following a link, and everything after
   reads that descriptor (``os.pread``), never the path again. For the daemon
   (``private=True``) a file with another hard link (an uploader's hidden ``ln``) is first
   copied to a new inode in processing/ that only we can reach, which takes the file's
   name there: the uploader's link keeps the old inode, and whatever is written through
   it is no longer ours.
2. The check, one of two ways, chosen by ``open``:

   - up front (zip, XML, and CSVs up to ``PRECHECK_BYTES``): ``check_fd`` reads and hashes
     the file, and ``report`` holds its verdict before anything is sent. The upload then
     hashes the bytes it sends, and the file ends (the body's closing boundary may go)
     only if that hash equals the checked one; otherwise the request is cut:
     ``Cut("changed")``.
   - while sending (bigger CSVs, where a pass of its own would add its whole time to the
     upload's): each block is read once, fed to the check (``CsvCheck``, which hashes it
     too) and then sent, so the check sees exactly the bytes sent. The request is cut as
     soon as the check knows the file fails (``Cut("rejected")``); at the end the file
     must not have been written meanwhile (fstat before and after), and the caller's
     ``judge`` (the daemon's change guard and its journal) sees the Report, and may cut,
     before the last bytes go.

   Either way Canvas holds an incomplete body, without its closing boundary, until the
   verdict: a cut request creates nothing (``upload``).
3. ``source()`` gives the body its blocks for one attempt; ``finish_check()`` completes a
   check that a failed or cut request left unfinished (reading the rest locally).

Files bigger than ``THREADED_BYTES`` are read, checked and hashed on a thread of their
own while the caller's thread sends (the check holds the GIL; hashing and sending release
it), at most ``AHEAD`` blocks ahead of the socket: memory stays flat whatever the size.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sisdropd import preflight
from sisdropd.upload import BLOCK, Cut

if TYPE_CHECKING:
    from sisdropd.config import Config
    from sisdropd.guard import Verdict
    from sisdropd.preflight import CsvCheck, Limits, Report

# CSVs up to this size are checked before the upload (a few milliseconds: the body then
# waits for nothing, and a rejected file never reaches the network); bigger ones while
# they are sent. Measured in bench/overlap.py.
PRECHECK_BYTES = 4 * 1024 * 1024
# Files bigger than this are read on a thread of their own beside the sending.
THREADED_BYTES = 4 * 1024 * 1024
AHEAD = 4  # blocks the reading thread may be ahead of the socket
_CHANGED_AFTER = "its bytes changed after they were checked"
_CHANGED_WHILE = "it was written to while it was being sent"
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class Rejected(Cut):
    """The check found the file fails: ``report`` says why (None until ``finish_check``)."""

    why = "rejected"

    def __init__(self, report: Report | None = None) -> None:
        super().__init__("the file fails the pre-flight check")
        self.report = report


class Held(Cut):
    """The change guard holds the file (``verdict``), judged on the Report of the bytes sent."""

    why = "held"

    def __init__(self, verdict: Verdict, report: Report) -> None:
        super().__init__(f"held by the change guard: {verdict.why}")
        self.verdict, self.report = verdict, report


class Changed(Cut):
    """The bytes read for the upload are not the bytes that were checked."""

    why = "changed"


@dataclass(frozen=True)
class Rules:
    """How a file is checked: the import type, the extensions taken, the limits, and
    whether its content is checked at all (``[watch] validate``)."""

    import_type: str = "instructure_csv"
    extensions: Sequence[str] = ("csv", "xml", "zip")
    limits: Limits | None = None
    validate: bool = True

    @classmethod
    def of(cls, cfg: Config, params: dict[str, Any] | None = None) -> Rules:
        """The rules for a file posted with ``params`` (default: the config's [import])."""
        w = cfg.watch
        import_type = str((params or cfg.import_params).get("import_type", cfg.import_type))
        return cls(import_type, tuple(w.extensions), preflight.Limits(max_bytes=w.max_bytes), w.validate)


class Outgoing:
    """One file on its way to Canvas: one open descriptor, its check, its blocks.

    ``report`` is the check's Report when it ran up front (or the file was refused before
    any content was read: a link, a FIFO, the wrong extension...), None when the check
    runs while the file is sent. ``size`` is fstat's at open; ``copied`` True when a hard
    link made ``open`` take a private copy. Use as a context manager, or ``close``.
    """

    def __init__(self, name: str, rules: Rules, fd: int | None, report: Report | None, size: int, copied: bool) -> None:
        self.name, self.rules, self.fd, self.report, self.size, self.copied = name, rules, fd, report, size, copied
        self._before: os.stat_result | None = None
        self._pass: _Pass | None = None

    @classmethod
    def open(cls, path: Path, *, name: str, rules: Rules, private: bool = False) -> Outgoing:
        """Open ``path`` (never following a link) and check it up front, or plan to check
        it while it is sent (see the module's docstring). ``name`` is the display name of
        every problem. With ``private`` a file with more than one hard link is first
        copied to a new inode that takes its name (``path``'s folder must be ours).

        Raises FileNotFoundError when ``path`` is gone, OSError when a private copy
        fails; any other problem with the file is in ``report``.
        """
        limits = rules.limits or preflight.Limits()
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            raise
        except (OSError, ValueError):  # a link, a name with a NUL, no permission: check_path says which
            report = preflight.check_path(path, name=name, extensions=rules.extensions, limits=limits)
            return cls(name, rules, None, report, report.size, False)
        copied = False
        try:
            st = os.fstat(fd)
            if private and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                fd = _private_copy(fd, path)
                copied = True
            out = cls(name, rules, fd, None, st.st_size, copied)
            kind = preflight.check_kind(fd, name=name, extensions=rules.extensions, limits=limits)
            out.size = kind.size
            if not kind.ok or kind.kind != "csv" or kind.size <= PRECHECK_BYTES:
                out.report = kind if not kind.ok else preflight.check_fd(
                    fd, name=name, import_type=rules.import_type, extensions=rules.extensions,
                    limits=limits, validate_content=rules.validate, sha256=True,
                )
            else:
                out._before = preflight.settled_stat(fd)
            return out
        except BaseException:
            os.close(fd)
            raise

    def source(self, judge: Callable[[Report], None] | None = None, *, record: bool = True) -> _Pass:
        """The file's blocks for one attempt at posting it (a ``upload.Blocks``).

        Checked up front: the blocks are hashed, and the end is refused (``Changed``)
        unless they hash to the checked bytes. Checked while sent: the blocks are checked;
        a failing check cuts at once (``Rejected``), a write to the file meanwhile at the
        end (``Changed``); then ``judge(report)`` runs before the last bytes go and may
        raise ``Cut`` itself. ``report`` is then set to the Report of the bytes sent.

        ``record`` False is for a caller that keeps no record of the file (``submit``):
        checked while sent, the check needs no hash (it sees the very bytes sent) and no
        row count; only a record of them does (the daemon's sidecar, journal and change
        guard). Nothing is hashed then (the Report's ``sha256`` None) and the rows past
        the check's deep part are not counted (``CsvCheck(count_rows=False)``: a third of
        the CPU time, the same verdict; should it find a fault, the file is read once more
        from its descriptor to say where).
        """
        if self.fd is None or (self.report is not None and not self.report.ok):
            raise ValueError("a file that failed its check has no blocks to post")
        if self._pass is not None:
            self._pass.close()
        if self.report is not None:
            expected = self.report.sha256
            digest = hashlib.sha256()

            def same_bytes() -> None:
                if digest.hexdigest() != expected:
                    raise Changed(_CHANGED_AFTER)

            self._pass = _Pass(self.fd, self.size, digest.update, same_bytes, None, _CHANGED_AFTER)
        else:
            fd, size = self.fd, self.size
            check = preflight.CsvCheck(
                self.name, size=size, limits=self.rules.limits or preflight.Limits(),
                validate_content=self.rules.validate, background=True, sha256=record,
                count_rows=record, reread=lambda: _blocks(fd, size),
            )

            def checked() -> None:
                report = self.finish_check()
                assert report is not None
                if (changed := self.written_to()) is not None:
                    raise changed  # before the verdict: it may be about bytes that changed
                if not report.ok:
                    raise Rejected(report)
                if judge is not None:
                    judge(report)

            self._pass = _Pass(self.fd, self.size, check.feed, checked, check, _CHANGED_WHILE)
        return self._pass

    def written_to(self) -> Changed | None:
        """A file checked while sent: ``Changed`` if it was written to since it was opened,
        else None. Whatever the check then found (a fault, or bytes missing because it
        shrank) is about bytes that are gone: the file must be checked again, never
        rejected on that verdict. Always None for a file checked up front (its hash
        decides, see ``source``)."""
        before, fd = self._before, self.fd
        if before is not None and fd is not None and preflight.stat_identity(before) != preflight.stat_identity(os.fstat(fd)):
            return Changed(_CHANGED_WHILE)
        return None

    def finish_check(self) -> Report | None:
        """The Report of a check run while sending, completed by reading locally whatever
        the attempt did not send (after a ``Rejected`` cut or a failed request); the up
        front ``report`` otherwise. Sets ``report``."""
        if self.report is None and self._pass is not None and self._pass.check is not None:
            self.report = self._pass.finish_check()
        return self.report

    def close(self) -> None:
        if self._pass is not None:
            self._pass.close()
            self._pass = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Outgoing:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class _Pass:
    """One pass over the file for one request: each block read once, ``feed`` it, send it.

    ``read_block`` hands out the blocks; at the end it calls ``settle`` (which may raise
    ``Cut``) before saying the file ended. With ``check`` (a ``CsvCheck``), its ``fatal``
    cuts at once (``Rejected``) and the rest is only checked. Bigger files are read by a
    thread of its own, from the first ``read_block`` on, at most ``AHEAD`` blocks ahead of
    the sender.
    """

    def __init__(
        self, fd: int, size: int, feed: Callable[[bytes], object], settle: Callable[[], None],
        check: CsvCheck | None, changed: str,
    ) -> None:
        self.fd, self.size, self.size_read, self.changed = fd, size, 0, changed
        self._feed, self._settle, self.check = feed, settle, check
        self._report: Report | None = None
        self._ready: deque[bytes | BaseException | None] = deque()
        self._cond = threading.Condition()
        self._sending = True  # False once the sender stopped taking blocks
        self._abandoned = False  # True once nobody wants the rest: the reader stops
        self._ended = False
        self._threaded = size > THREADED_BYTES
        self._thread: threading.Thread | None = None  # started by the first read_block

    # -- the sender's side -----------------------------------------------------------
    def read_block(self) -> bytes:
        if self._ended:
            return b""
        if self._threaded and self._thread is None:
            # Only now: the request's headers are out. A reader checking (and holding the
            # GIL) while they were built and sent made each of their syscalls wait for a
            # 5 ms switch of the GIL: 15-20 ms before the first byte of the body.
            self._thread = threading.Thread(target=self._read_ahead, name="reader", daemon=True)
            self._thread.start()
        if self._thread is None:
            item: bytes | BaseException | None = self._next()
        else:
            with self._cond:
                while not self._ready:
                    self._cond.wait()
                item = self._ready.popleft()
                self._cond.notify_all()
        if isinstance(item, BaseException):
            self._stop_sending()
            raise item
        if item is None:  # the end: the verdict before the last bytes
            self._ended = True
            self._settle()
            return b""
        return item

    def _next(self) -> bytes | BaseException | None:
        """Read, feed and return the next block, in the caller's thread."""
        block = self._read()
        if block is None:
            return None
        self._feed(block)
        if self.check is not None and self.check.fatal:
            return Rejected()
        return block

    def _read(self) -> bytes | None:
        if self.size_read >= self.size or self._abandoned:
            return None
        block = os.pread(self.fd, min(BLOCK, self.size - self.size_read), self.size_read)
        if not block:
            raise Changed(f"{self.changed} (it shrank: {self.size - self.size_read} bytes missing)")
        self.size_read += len(block)
        return block

    # -- the reading thread --------------------------------------------------------------
    def _read_ahead(self) -> None:
        try:
            while (block := self._read()) is not None:
                self._feed(block)
                if not self._sending:
                    continue  # the sender has gone: only the check wants the rest
                if self.check is not None and self.check.fatal:
                    self._hand(Rejected())
                    self._sending = False
                    continue
                self._hand(block)
            self._hand(None)
        except BaseException as e:  # noqa: BLE001 - handed to the sender, who raises it
            self._hand(e)

    def _hand(self, item: bytes | BaseException | None) -> None:
        with self._cond:
            while self._sending and len(self._ready) >= AHEAD:
                self._cond.wait()
            if self._sending:
                self._ready.append(item)
                self._cond.notify_all()

    def _stop_sending(self) -> None:
        with self._cond:
            self._sending = False
            self._ready.clear()
            self._cond.notify_all()

    # -- the end ---------------------------------------------------------------------------
    def finish_check(self) -> Report:
        """Stop sending, check whatever was not read yet, and return the check's Report."""
        assert self.check is not None
        if self._report is None:
            self._stop_sending()
            if self._thread is not None:
                self._thread.join()
            while (block := self._read_quietly()) is not None:  # what no thread read
                self._feed(block)
            self._report = self.check.finish()
        return self._report

    def _read_quietly(self) -> bytes | None:
        try:
            return self._read()
        except Changed:
            return None  # the check finds the size wrong and says so

    def close(self) -> None:
        """Abandon the pass: stop the reading thread, if any, and the check's."""
        self._abandoned = True  # the reader stops at its next block
        self._stop_sending()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.check is not None and self._report is None:
            self.check.close()


def _blocks(fd: int, size: int) -> Iterator[bytes]:
    """The first ``size`` bytes of ``fd``, read again from its start (``os.pread``)."""
    at = 0
    while at < size and (block := os.pread(fd, min(BLOCK, size - at), at)):
        at += len(block)
        yield block


def _private_copy(fd: int, path: Path) -> int:
    """Copy the open file ``fd`` to a new inode that takes ``path``'s name; its descriptor.

    The copy is made under a hidden name in the same folder (mode 0600, fsynced, the
    original's times kept) and renamed over ``path``: the file's other links keep the old
    inode. A copy left by a crash has the same hidden name and is replaced next time.
    ``fd`` is closed. Raises OSError.
    """
    from sisdropd.files import fsync_dir  # the daemon's path only: submit never copies

    tag = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]
    tmp = path.with_name(f".sisdropd-copy-{tag}")
    tmp.unlink(missing_ok=True)
    out = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        _copy_bytes(fd, out)
        st = os.fstat(fd)
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.fsync(out)
        os.rename(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        os.close(out)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return out


def _copy_bytes(src: int, dst: int) -> None:
    """Every byte of ``src`` into ``dst`` from offset 0 (in the kernel where it can)."""
    at = 0
    try:
        while n := os.copy_file_range(src, dst, 1 << 30, at, at):
            at += n
        return
    except OSError:
        pass  # not here (an old kernel, another filesystem): plain reads and writes
    while block := os.pread(src, BLOCK, at):
        os.pwrite(dst, block, at)
        at += len(block)
    os.ftruncate(dst, at)
