"""The byte-level pass over a whole CSV: UTF-8, quoting, and where lines and records end.

Every byte of a CSV goes through ``ByteScan.scan`` once, in blocks of any size as they
come, and its verdicts do not depend on where the blocks were cut. It finds the fatal
faults Canvas would refuse the whole file for, exactly, anywhere in the file:

- bytes that are not UTF-8 (Canvas: "Invalid UTF-8"), with the first one's line and
  column and the number of lines holding one;
- quoting that Canvas's (Ruby's) parser refuses as "Malformed CSV": a quote inside an
  unquoted value, text after a closing quote, a quoted value that never ends.

It works on bytes with C-speed operations (``bytes.isascii``, ``count``, ``split``, one
regular expression), not character by character in Python: a block without a quote costs
a UTF-8 check (only when it is not pure ASCII) and a count of its line ends. Quoting is
checked with a property of well-formed CSV: counting quotes from the start, every
even-numbered one (0, 2, ...) opens a value or is the second of an escaped pair ``""``,
so the byte before it is a comma, a line end, a quote or the start; every odd-numbered
one closes a value or starts an escaped pair, so the byte after it is a comma, a line
end, a quote or the end. A file is well quoted exactly when both hold for every quote and
their number is even. Splitting a block at its quotes and joining the stretches outside
quoted values leaves a short string where one regular expression finds any offence; the
rare block that has one is then walked quote by quote to say where.

Lines end at ``\\n``, ``\\r\\n`` or a lone ``\\r``, as Python's csv reads ``newline=''``
text; a record ends at a line end outside a quoted value. ``records`` counts record ends
(blank lines included) up to the first quoting fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Bytes = bytes | bytearray  # what the pass reads (a block as given, or a piece of one)

_QUOTE, _CR, _LF, _COMMA = 0x22, 0x0D, 0x0A, 0x2C
_SEPARATORS = (_COMMA, _CR, _LF)  # what may come before an opening or after a closing quote
_START = -1  # the "byte" before the first one (after a BOM): a value starts there
# Bigger blocks are scanned in pieces this big: the several passes over a piece (UTF-8,
# line ends, quotes) then find it in the CPU's cache, and split()'s list stays small.
_PIECE = 64 * 1024
_CONTINUATION = bytes(range(0x80, 0xC0))  # UTF-8 bytes that do not start a character
# The outside-joined string (see the module docstring) reduced to three classes of byte:
# a quote stays, a separator becomes ",", anything else "x". A quote with a wrong
# neighbour is then an ``x"`` (it opens a value mid-value) or a ``"x`` (text after it).
_CLASSES = bytes(
    0x22 if b == 0x22 else 0x2C if b in (0x2C, 0x0D, 0x0A) else 0x78 for b in range(256)
)
_UNDECODED = re.compile("[\udc80-\udcff]")  # a byte that was not UTF-8 (surrogateescape)
_UNDECODED_LINE = re.compile("[\udc80-\udcff][^\r\n]*")  # ... and the rest of its line


def line_ends(buf: Bytes, start: int = 0, end: int | None = None) -> int:
    """Line ends (``\n``, ``\r\n`` or ``\r``) in ``buf[start:end]``, counted without a copy."""
    stop = len(buf) if end is None else end
    if buf.find(b"\r", start, stop) < 0:
        return buf.count(b"\n", start, stop)
    if start == 0 and stop == len(buf):  # splitlines() splits at exactly these three, and
        lines = len(buf.splitlines())  # beats three counts (\r\n is a slow one) 2.5 times
        return lines if buf[-1] in (_CR, _LF) else lines - 1
    return buf.count(b"\n", start, stop) + buf.count(b"\r", start, stop) - buf.count(b"\r\n", start, stop)


def _last_line_end(buf: Bytes, end: int) -> int:
    """Index of the last ``\\n`` or ``\\r`` before ``end``, or -1."""
    return max(buf.rfind(b"\n", 0, end), buf.rfind(b"\r", 0, end))


def _chars(buf: Bytes) -> int:
    """Characters in UTF-8 ``buf``: its bytes that start one (an undecodable byte counts)."""
    return len(buf) if buf.isascii() else len(buf.translate(None, _CONTINUATION))


def _sequence_length(lead: int) -> int:
    """Bytes of the UTF-8 sequence that ``lead`` starts (1 for ASCII or a stray byte)."""
    return 2 if 0xC0 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if 0xF0 <= lead < 0xF8 else 1


def _incomplete_tail(buf: Bytes) -> int:
    """How many bytes at the end of ``buf`` start a UTF-8 sequence that goes on past it."""
    for back in range(1, min(3, len(buf)) + 1):
        byte = buf[-back]
        if byte < 0x80:
            return 0
        if byte >= 0xC0:
            return back if _sequence_length(byte) > back else 0
    return 0


@dataclass(frozen=True)
class QuoteFault:
    """The first quoting fault: ``offset`` in the file (of the offending byte), its
    1-based ``line`` and ``column`` (in characters), and ``kind``: ``stray`` (a quote
    inside an unquoted value), ``after`` (text after a closing quote) or ``open`` (a
    quoted value that never ends: ``line`` is then the file's last line, ``column`` 0
    and ``record_line`` the line on which the unfinished record begins)."""

    offset: int
    line: int
    column: int
    kind: str
    record_line: int = 0


class ByteScan:
    """The pass over one CSV's bytes, fed block by block with ``scan`` and ended by ``finish``.

    Feed it the bytes after any UTF-8 BOM. Read its findings after ``finish``: ``bad``
    (line, column, byte) of the first byte that is not UTF-8 and ``bad_lines`` the lines
    holding one; ``fault`` the first quoting fault, after which quotes are no longer
    followed; ``lines`` line ends, ``records`` record ends before any fault, ``offset``
    bytes scanned, ``ends_with_line_end``. Memory stays bounded whatever the blocks.

    With ``count=False`` the pass only decides whether the file has a fault: it has one
    exactly when the counted pass would set ``fault`` or ``bad``, but nothing is scanned
    after the first one, and its place, ``bad_lines``, ``lines`` and ``records`` mean
    nothing. Counting line ends is what the counted pass spends most of its time on
    (``bytes.count`` runs at 2 GB/s, ``find`` and ``isascii`` at 15-20): a block without a
    quote then costs a ``find`` and an ``isascii`` (and a UTF-8 decode when it is not
    ASCII), whole, without being cut into pieces. For a caller that needs no count and
    finds the place of a fault, when there is one, by scanning again (``CsvCheck``).
    """

    def __init__(self, base: int = 0, *, count: bool = True) -> None:
        self.count = count
        self.offset = base  # file offset of the next byte (``base``: the BOM's length)
        self.lines = 0
        self.records = 0
        self.in_quotes = False
        self.fault: QuoteFault | None = None
        self.bad: tuple[int, int, int] | None = None
        self.bad_lines = 0
        self.record_line = 1  # the line on which the record under way began
        self._prev = _START  # the byte before the next piece
        self._cr = False  # the last piece ended with \r (a \n next ends no new line)
        self._cr_outside = False  # ... and that \r was outside a quoted value
        self._close_pending = False  # the last piece ended with a closing-side quote
        self._column = 0  # characters since the last line end
        self._carry: Bytes = b""  # an incomplete UTF-8 sequence that ended the last piece
        self._carry_at = (1, 1)  # its line and column
        self._bad_open = False  # the line under way already holds a byte not UTF-8

    @property
    def ends_with_line_end(self) -> bool:
        """True when the last byte scanned ends a line (or nothing was scanned)."""
        return self._prev in (_START, _CR, _LF)

    def scan(self, block: Bytes) -> None:
        """Take the next bytes of the file (bytes or bytearray; not kept after it returns)."""
        if not self.count:
            self._scan_uncounted(block)
            return
        if len(block) <= _PIECE:
            if block:
                self._piece(block)
            return
        for at in range(0, len(block), _PIECE):  # pieces that stay in the CPU's cache
            self._piece(block[at : at + _PIECE])

    def _scan_uncounted(self, block: Bytes) -> None:
        """``scan`` with ``count=False``: a block without a quote in one go."""
        if self.fault is not None or self.bad is not None or not block:
            return  # the verdict is known; its place is found by another pass
        if self._close_pending or block.find(b'"') >= 0:
            for at in range(0, len(block), _PIECE):
                self._piece(block[at : at + _PIECE] if len(block) > _PIECE else block)
            return
        # No quote: inside a quoted value the block stays inside, outside it stays outside,
        # and nothing in it opens or closes a value. Only its UTF-8 can be at fault.
        if self._carry or not block.isascii():
            self._utf8(block, -1, False)
        self.offset += len(block)
        self._prev = block[-1]
        self._cr = self._prev == _CR

    def finish(self) -> None:
        """The end of the file: an unfinished UTF-8 sequence or quoted value is a fault
        (a closing quote as the very last byte is fine)."""
        if self._carry:
            self._undecodable(*self._carry_at, self._carry[0], open_line=True)
            self._carry = b""
        if self.fault is None and self.in_quotes:
            last_line = self.lines + (0 if self.ends_with_line_end else 1)
            self.fault = QuoteFault(self.offset, last_line, 0, "open", self.record_line)

    # ------------------------------------------------------------------------- one piece

    def _piece(self, piece: Bytes) -> None:
        """Scan one piece; line numbers and columns refer to the state before it."""
        joins_crlf = self._cr and piece[0] == _LF  # the \n of a \r\n already counted
        ends = line_ends(piece) - joins_crlf if self.count else 0
        last = _last_line_end(piece, len(piece)) if self.count else -1
        if self.fault is None:
            self._quotes(piece, ends, joins_crlf)
        self._utf8(piece, last, joins_crlf)
        if self.count:
            self._column = _chars(piece[last + 1 :]) if last >= 0 else self._column + _chars(piece)
        self.lines += ends
        self.offset += len(piece)
        self._prev = piece[-1]
        self._cr = self._prev == _CR

    def _where(self, piece: Bytes, at: int, joins_crlf: bool) -> tuple[int, int]:
        """Line and column of ``piece[at]``."""
        line = self.lines + 1 + line_ends(piece, 0, at) - (joins_crlf and at > 0)
        last = _last_line_end(piece, at)
        column = _chars(piece[last + 1 : at]) if last >= 0 else self._column + _chars(piece[:at])
        return line, column + 1

    # ---------------------------------------------------------------------------- quotes

    def _quotes(self, piece: Bytes, ends: int, joins_crlf: bool) -> None:
        """Follow quoting through the piece (``ends``: its line ends); on the first fault,
        say where and stop following."""
        crlf_outside = joins_crlf and self._cr_outside
        if piece.find(b'"') < 0:
            if self.in_quotes:
                return  # all inside one quoted value
            if self._close_pending and piece[0] not in _SEPARATORS:
                self._fault(piece, joins_crlf)
                return
            self._close_pending = False
            if ends:  # outside quotes every line end ends a record
                self.records += ends
                self.record_line = self.lines + ends + 1
            self._cr_outside = piece[-1] == _CR
            return
        segments = piece.split(b'"')
        quotes = len(segments) - 1
        first = 1 if self.in_quotes else 0  # segments[first::2] lie outside quoted values
        outside = segments[first::2]
        ends_inside = (quotes + first) % 2 == 1
        joined = b'"'.join(outside)
        if first:
            joined = b'"' + joined  # the closing-side quote before the first outside stretch
        if ends_inside:
            joined += b'"'  # the opening-side quote after the last one
        head = segments[0]
        offended = False
        if not first:
            if self._close_pending:  # the quote that ended the last piece closed a value
                offended = bool(head) and head[0] not in _SEPARATORS
            elif not head:  # the piece starts with an opening quote
                offended = self._prev not in (_START, *_SEPARATORS)
        classes = joined.translate(_CLASSES)
        if offended or b'x"' in classes or b'"x' in classes:
            self._fault(piece, joins_crlf)
            return
        record_ends = line_ends(joined) - (crlf_outside and not first) if self.count else 0
        if record_ends:
            self.records += record_ends
            self.record_line = self._record_line(segments, first, ends)
        self.in_quotes = ends_inside
        self._close_pending = not ends_inside and not segments[-1]
        self._cr_outside = not ends_inside and piece[-1] == _CR

    def _record_line(self, segments: list[bytes] | list[bytearray], first: int, ends: int) -> int:
        """The line on which the record after the piece's last record end begins, given
        the piece's segments between quotes and its ``ends`` line ends."""
        after = 0  # line ends after the last record end: in the segments that follow it
        for index in range(len(segments) - 1, -1, -1):
            segment = segments[index]
            if (index - first) % 2 == 0 and _last_line_end(segment, len(segment)) >= 0:
                break
            after += line_ends(segment)
        return self.lines + ends - after + 1

    def _fault(self, piece: Bytes, joins_crlf: bool) -> None:
        """Walk the piece quote by quote as Ruby's parser would, to the first fault."""
        inside, at, records = self.in_quotes, 0, 0
        prev, size = self._prev, len(piece)
        crlf_outside = joins_crlf and self._cr_outside
        if self._close_pending:
            if piece[0] == _QUOTE:  # the pending quote and this one are an escaped pair
                inside, at = True, 1
            elif piece[0] not in _SEPARATORS:
                self._set_fault(piece, 0, "after", records, joins_crlf)
                return
        while at < size:
            quote = piece.find(b'"', at)
            if inside:
                if quote < 0 or quote + 1 == size:
                    break  # still inside, or a quote whose next byte is in the next piece
                after = piece[quote + 1]
                if after == _QUOTE:
                    at = quote + 2
                elif after in _SEPARATORS:
                    inside, at = False, quote + 1
                else:
                    self._set_fault(piece, quote + 1, "after", records, joins_crlf)
                    return
                continue
            end = size if quote < 0 else quote
            records += line_ends(piece, at, end) - (crlf_outside and at == 0)
            if quote < 0:
                break
            before = piece[quote - 1] if quote > 0 else prev
            if before not in (_START, *_SEPARATORS):
                self._set_fault(piece, quote, "stray", records, joins_crlf)
                return
            inside, at = True, quote + 1
        raise AssertionError("the quote rules found a fault that the walk did not")

    def _set_fault(
        self, piece: Bytes, at: int, kind: str, records: int, joins_crlf: bool
    ) -> None:
        line, column = self._where(piece, at, joins_crlf)
        self.fault = QuoteFault(self.offset + at, line, column, kind)
        self.records += records

    # ----------------------------------------------------------------------------- UTF-8

    def _utf8(self, piece: Bytes, last: int, joins_crlf: bool) -> None:
        """Check the piece is UTF-8 (``last``: its last line end, or -1), carrying a
        sequence cut by its end over to the next piece."""
        start = 0
        if self._carry:  # complete the sequence the last piece ended in
            want = _sequence_length(self._carry[0]) - len(self._carry)
            while start < min(want, len(piece)) and 0x80 <= piece[start] < 0xC0:
                start += 1
            sequence = self._carry + piece[:start]
            if start == len(piece) and len(sequence) < _sequence_length(sequence[0]):
                self._carry = sequence  # still incomplete: the piece was that short
                return
            self._carry = b""
            try:
                sequence.decode("utf-8")
            except UnicodeDecodeError:
                self._undecodable(*self._carry_at, sequence[0], open_line=True)
        if piece.isascii():
            self._bad_open = self._bad_open and last < 0
            return
        end = len(piece) - _incomplete_tail(piece)
        if end < len(piece):
            self._carry = piece[end:]
            self._carry_at = self._where(piece, end, joins_crlf) if self.count else (0, 0)
        view = memoryview(piece)[start:end]
        try:
            str(view, "utf-8")
        except UnicodeDecodeError as e:
            self._count_undecodable(piece, start, start + e.start, joins_crlf, view)
            return
        self._bad_open = self._bad_open and last < 0

    def _count_undecodable(
        self, piece: Bytes, start: int, first_bad: int, joins_crlf: bool, view: memoryview
    ) -> None:
        """A piece with bytes that are not UTF-8: note the first, count their lines."""
        text = str(view, "utf-8", "surrogateescape")
        count = _UNDECODED_LINE.subn("", text)[1]  # each match runs to its line's end
        first_end = min((i for i in (text.find("\n"), text.find("\r")) if i >= 0), default=len(text))
        if self._bad_open and _UNDECODED.search(text, 0, first_end):
            count -= 1  # the line under way was counted already, in an earlier piece
        line, column = self._where(piece, first_bad, joins_crlf)
        self._undecodable(line, column, piece[first_bad], count=count)
        last = max(text.rfind("\n"), text.rfind("\r"))
        tail_bad = _UNDECODED.search(text, last + 1) is not None
        self._bad_open = tail_bad or (last < 0 and self._bad_open)

    def _undecodable(
        self, line: int, column: int, byte: int, *, count: int = 1, open_line: bool = False
    ) -> None:
        """Record bytes that are not UTF-8: the first one's place, and ``count`` lines."""
        if self.bad is None:
            self.bad = (line, column, byte)
        if open_line:  # one sequence at a piece boundary: on the line under way
            if not self._bad_open:
                self.bad_lines += 1
                self._bad_open = True
            return
        self.bad_lines += count
