"""Speed of the pre-flight check of a CSV (issue 15): the deep part, the fast part, the push API.

Writes users CSVs made of unique rows (one in ten names non-ASCII, as real rosters have)
into a folder (default /tmp, kept between runs), then for each prints, best of --runs:

- ``check_path``: the whole check as ``sisdropd validate`` runs it, in MB/s;
- ``deep``: the row-by-row part alone (a file of DEEP bytes is all deep part);
- ``fast``: the rest, (time of the file - time of its deep part) / bytes past it (n/a
  when the deep part is most of the time: the difference is then mostly noise);
- ``no hash``: the same CSV check without the SHA-256 (the machinery alone);
- ``push``: the push API (``CsvCheck``) fed the file in 1 MiB blocks read with os.read,
  sha256 included, as an uploader would feed it; and with ``background=True`` (the check
  on its own thread, the hash on the caller's).

    python bench/preflight_speed.py [--folder /tmp] [--sizes 64,1024] [--runs 3]

The 64 MiB size also runs two variants: every value quoted, and CRLF line ends.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

from sisdropd import preflight

_FIRST = ("Alice", "Bob", "Chen", "Dana", "Eve", "Farid", "Gus", "Hana", "Ivan", "Jürgen")
BLOCK = 1 << 20


def users_csv(path: Path, size: int, *, quoted: bool = False, crlf: bool = False) -> Path:
    """A users CSV of ``size`` bytes or a little more, every row unique; kept if present."""
    if path.exists() and path.stat().st_size >= size:
        return path
    end = "\r\n" if crlf else "\n"
    part = path.with_suffix(".part")
    with part.open("wb") as f:
        f.write(f"user_id,login_id,first_name,last_name,email,status{end}".encode())
        written, i = 0, 0
        while written < size:
            rows = []
            for i in range(i, i + 10_000):
                first = _FIRST[i % 10]
                last = f"Surname{i * 7919 % 1_000_003}"
                cells = [f"U{i:09d}", f"login{i}", first, last, f"{first}.{last}@example.edu".lower(), "active"]
                if quoted:
                    cells = [f'"{c}"' for c in cells]
                rows.append(",".join(cells) + end)
            i += 1
            block = "".join(rows).encode()
            f.write(block)
            written += len(block)
    part.rename(path)
    return path


def best(runs: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def check(path: Path) -> None:
    report = preflight.check_path(path)
    assert report.ok, report.problems[:3]


def scan_only(path: Path) -> None:
    """The check without the hash: the CSV machinery alone, fed 64 KiB reads."""
    from sisdropd.preflight.csvcheck import CsvScan
    from sisdropd.preflight.report import DEFAULT_LIMITS, Builder

    scan = CsvScan(path.name, Builder(path.name, "csv", path.stat().st_size, DEFAULT_LIMITS))
    fd = os.open(path, os.O_RDONLY)
    try:
        while block := os.read(fd, 64 * 1024):
            scan.feed(block)
    finally:
        os.close(fd)
    scan.finish()


def push(path: Path, background: bool) -> None:
    checker = preflight.CsvCheck(path.name, size=path.stat().st_size, background=background)
    fd = os.open(path, os.O_RDONLY)
    try:
        while block := os.read(fd, BLOCK):
            checker.feed(block)
    finally:
        os.close(fd)
    report = checker.finish()
    assert report.ok and report.sha256, report.problems[:3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path("/tmp"))
    parser.add_argument("--sizes", default="64,1024", help="MiB, comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    deep_bytes = getattr(preflight, "DEEP_BYTES", None) or preflight.DEEP_CHARS
    has_push = hasattr(preflight, "CsvCheck")
    files = []
    for mib in (int(s) for s in args.sizes.split(",")):
        files.append((f"users {mib} MiB", users_csv(args.folder / f"bench-users-{mib}.csv", mib << 20)))
        if mib == 64:
            files.append(("quoted 64 MiB", users_csv(args.folder / "bench-quoted-64.csv", 64 << 20, quoted=True)))
            files.append(("CRLF 64 MiB", users_csv(args.folder / "bench-crlf-64.csv", 64 << 20, crlf=True)))
    print(f"deep part: the first {deep_bytes / 2**20:g} MiB; push API: {'yes' if has_push else 'absent'}")
    head = f"{'file':<16}{'check_path':>14}{'deep':>12}{'fast':>12}{'no hash':>12}{'push':>12}{'push bg':>12}"
    print(head + "\n" + "-" * len(head))
    for label, path in files:
        size = path.stat().st_size
        deep_file = args.folder / f"{path.stem}.deep.csv"
        with path.open("rb") as f:
            head_bytes = f.read(deep_bytes)
        deep_file.write_bytes(head_bytes[: head_bytes.rfind(b"\n") + 1])
        whole = best(args.runs, lambda: check(path))
        deep = best(args.runs, lambda: check(deep_file))
        deep_size = deep_file.stat().st_size
        fast = f"{(size - deep_size) / (whole - deep) / 1e6:6.0f} MB/s" if whole > 1.2 * deep else "n/a"
        cells = [f"{size / whole / 1e6:8.0f} MB/s", f"{deep_size / deep / 1e6:6.0f} MB/s", fast]
        if has_push:
            cells.append(f"{size / best(args.runs, lambda: scan_only(path)) / 1e6:6.0f} MB/s")
        else:
            cells.append(f"{'-':>11}")
        for background in (False, True):
            if has_push:
                took = best(args.runs, lambda b=background: push(path, b))
                cells.append(f"{size / took / 1e6:6.0f} MB/s")
            else:
                cells.append(f"{'-':>11}")
        print(f"{label:<16}" + "".join(f"{c:>12}" for c in cells) + f"   ({whole:.2f} s whole, {deep * 1000:.0f} ms deep)")
        deep_file.unlink()


if __name__ == "__main__":
    main()
