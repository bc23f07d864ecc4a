"""The byte-level pass (sisdropd.preflight.csvbytes) against plain reference models.

The pass checks quoting and UTF-8 with whole-block bytes operations and carries its state
from block to block. Each reference here reads the same bytes one character at a time,
the way Canvas's (Ruby's) CSV parser and a UTF-8 decoder do; hypothesis throws
quote-heavy bytes at both, cut into blocks anywhere, and they must agree exactly: the
first fault's kind, line and column, the line ends, the record ends before the fault,
the first undecodable byte and the number of lines holding one.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from sisdropd.preflight import csvbytes
from sisdropd.preflight.csvbytes import ByteScan, line_ends

LINE_END = re.compile(rb"\r\n|\r|\n")


def reference_quotes(data: bytes) -> dict[str, object]:
    """Ruby's CSV quoting rules, byte by byte: the first fault, lines and record ends."""
    state = "start"  # start of a value, unquoted, quoted, closing (a quote seen inside)
    line, column, records, record_line = 1, 0, 0, 1
    fault = None
    i = 0
    while i < len(data):
        c = data[i : i + 1]
        if not 0x80 <= data[i] < 0xC0:
            column += 1
        if fault is None:
            if state == "quoted":
                if c == b'"':
                    state = "closing"
            elif state == "closing":
                if c == b'"':
                    state = "quoted"
                elif c in (b",", b"\r", b"\n"):
                    state = "start"
                else:
                    fault = ("after", line, column)
            elif c == b'"':
                if state == "start":
                    state = "quoted"
                else:
                    fault = ("stray", line, column)
            elif c in (b",", b"\r", b"\n"):
                state = "start"
            else:
                state = "unquoted"
        if c == b"\n" or (c == b"\r" and data[i + 1 : i + 2] != b"\n"):
            line, column = line + 1, 0
            if fault is None and state == "start":
                records += 1
                record_line = line
        i += 1
    lines = len(LINE_END.findall(data))
    if fault is None and state == "quoted":
        last_line = lines + (0 if data.endswith((b"\n", b"\r")) or not data else 1)
        fault = ("open", last_line, record_line)
    return {"fault": fault, "lines": lines, "records": records}


def reference_utf8(data: bytes) -> tuple[tuple[int, int, int] | None, int]:
    """The first byte that is not UTF-8 as (line, column, byte), and the lines with one."""
    text = data.decode("utf-8", "surrogateescape")
    first, bad_lines = None, 0
    for number, line in enumerate(re.split("\r\n|\r|\n", text), 1):
        bad = re.search("[\udc80-\udcff]", line)
        if bad:
            bad_lines += 1
            if first is None:
                first = (number, bad.start() + 1, ord(bad.group()) - 0xDC00)
    return first, bad_lines


def scanned(data: bytes, cuts: list[int], *, count: bool = True) -> ByteScan:
    scan = ByteScan(count=count)
    start = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        scan.scan(data[start:cut])
        start = max(start, cut)
    scan.finish()
    return scan


def verdict(scan: ByteScan) -> dict[str, object]:
    fault = scan.fault
    if fault is None:
        shown = None
    elif fault.kind == "open":
        shown = ("open", fault.line, fault.record_line)
    else:
        shown = (fault.kind, fault.line, fault.column)
    return {"fault": shown, "lines": scan.lines, "records": scan.records}


# Bytes that make quoting and UTF-8 interesting, in runs: quotes, separators, line ends,
# a two- and a three-byte character, and bytes that are not UTF-8.
PIECES = [b'"', b'"', b'""', b",", b"\n", b"\r", b"\r\n", b"a", b"bc", b" ", b"\xc3\xa9", b"\xe2\x82\xac", b"\xff", b"\xe9", b"\xc3"]
CSV_BYTES = st.lists(st.sampled_from(PIECES), max_size=60).map(b"".join)
CUTS = st.lists(st.integers(0, 400), max_size=12)


@settings(max_examples=400, deadline=None)
@given(data=CSV_BYTES, cuts=CUTS)
def test_quoting_verdict_matches_ruby_wherever_the_blocks_are_cut(data, cuts):
    assert verdict(scanned(data, cuts)) == reference_quotes(data)


@settings(max_examples=400, deadline=None)
@given(data=CSV_BYTES, cuts=CUTS)
def test_utf8_verdict_matches_a_decoder_wherever_the_blocks_are_cut(data, cuts):
    scan = scanned(data, cuts)
    assert (scan.bad, scan.bad_lines) == reference_utf8(data)


@settings(max_examples=100, deadline=None)
@given(data=CSV_BYTES, cuts=CUTS)
def test_one_byte_blocks_give_the_same_verdict(data, cuts):
    whole = scanned(data, [])
    single = scanned(data, list(range(len(data))))
    assert verdict(single) == verdict(whole) == verdict(scanned(data, cuts))
    assert (single.bad, single.bad_lines) == (whole.bad, whole.bad_lines)


def faulty(scan: ByteScan) -> bool:
    return scan.fault is not None or scan.bad is not None


@settings(max_examples=400, deadline=None)
@given(data=CSV_BYTES, cuts=CUTS, piece=st.sampled_from([64 * 1024, 5, 1]))
def test_the_uncounted_pass_finds_a_fault_exactly_when_the_counted_one_does(data, cuts, piece):
    """``count=False`` (a quote-free block in one go, the others in pieces, no line counted)
    against the references, cut anywhere, with pieces of every size."""
    expected = reference_quotes(data)["fault"] is not None or reference_utf8(data)[0] is not None
    saved = csvbytes._PIECE
    csvbytes._PIECE = piece
    try:
        for blocks in (cuts, [], list(range(len(data)))):
            assert faulty(scanned(data, blocks, count=False)) == expected
    finally:
        csvbytes._PIECE = saved


def test_the_uncounted_pass_ends_a_character_cut_by_a_block_where_the_next_block_begins():
    # \xc3 then "b": not UTF-8, even though a \xa9 (which would complete it) comes later.
    for count in (True, False):
        scan = ByteScan(count=count)
        for block in (b"a,\xc3", b"b,c\n", b"\xa9\n"):
            scan.scan(block)
        scan.finish()
        assert scan.bad is not None


def test_the_uncounted_pass_stops_at_the_first_fault():
    scan = ByteScan(count=False)
    scan.scan(b'a,b"c\n')  # a stray quote
    assert scan.fault is not None and scan.offset == 6
    scan.scan(b"\xff\n")
    scan.finish()
    assert scan.bad is None and scan.offset == 6  # not looked at: the verdict was known


def test_well_quoted_values_pass_in_every_form():
    data = (
        b'a,"b",c\n'  # a quoted value
        b'"",x\n'  # an empty one
        b'"say ""hi""",y\r\n'  # escaped quotes
        b'"two\nlines","with, comma"\r'  # a line break and a comma inside, a lone \r
        b'"""",z\n'  # a value that is one quote
    )
    for cuts in ([], list(range(len(data)))):
        scan = scanned(data, cuts)
        assert scan.fault is None and scan.records == 5 and scan.lines == 6


def test_line_ends_counts_crlf_once():
    assert line_ends(b"a\r\nb\rc\nd") == 3
    assert line_ends(b"a\r\nb", 0, 2) == 1  # the \r, cut from its \n, still ends the line
