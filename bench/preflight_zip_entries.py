"""Peak memory of the pre-flight check on a zip of many tiny entries (issue 12, point 8).

Builds (once, in the folder given, default /tmp) a zip of 200,000 entries, each a one-byte
CSV, about 17 MB: a zip bomb of another kind, whose cost is the central directory
``zipfile`` turns into one ZipInfo object per entry, not what the entries unpack to. Then
runs ``check_path`` on it in a fresh process per run, beside a process that only imports
the check, and prints each one's peak RSS (VmHWM) and time, and the first problem.

    python bench/preflight_zip_entries.py [folder] [entries]
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

_CHILD = r"""
import json, sys, time
from pathlib import Path
from sisdropd import preflight
preflight.check_path  # import the whole check before measuring
start = time.perf_counter()
report = preflight.check_path(Path(sys.argv[1])) if sys.argv[1] != "-" else None
took = time.perf_counter() - start
first = str(report.problems[0]) if report and report.problems else ""
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
status = Path("/proc/self/status").read_text()
peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
print(json.dumps({"seconds": took, "peak_rss": peak, "first_problem": first}))
"""


def build(path: Path, entries: int) -> None:
    """A zip of ``entries`` stored one-byte members with short names (zipfile's own writer)."""
    if path.exists():
        return
    part = path.with_suffix(".part")
    with zipfile.ZipFile(part, "w", zipfile.ZIP_STORED) as zf:
        for i in range(entries):
            zf.writestr(f"{i}.csv", b"x")
    part.rename(path)


def lie_about_entries(path: Path, liar: Path) -> None:
    """A copy of the zip whose end records declare one entry: only a walk finds the rest."""
    data = bytearray(path.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, 1, 1)
    end64 = data.rfind(b"PK\x06\x06", 0, end)
    if end64 >= 0:
        struct.pack_into("<QQ", data, end64 + 24, 1, 1)
    liar.write_bytes(data)


def measure(path: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _CHILD, path], capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp")
    entries = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    path = folder / f"entries-{entries}.zip"
    build(path, entries)
    size = path.stat().st_size
    base = measure("-")
    print(f"zip: {path} ({size / 1e6:.1f} MB, {entries} entries)")
    print(f"{'run':<32}{'peak RSS':>12}{'seconds':>10}  first problem")
    print(f"{'import the check only':<32}{base['peak_rss'] / 1e6:>9.1f} MB{'':>10}")
    liar = folder / f"entries-{entries}-declares-1.zip"
    lie_about_entries(path, liar)
    for label, target in (("check_path", path), ("check_path, declares 1", liar)):
        for run in range(2):
            r = measure(str(target))
            print(
                f"{label + ', run ' + str(run + 1):<32}{r['peak_rss'] / 1e6:>9.1f} MB"  # type: ignore[operator]
                f"{r['seconds']:>10.3f}  {str(r['first_problem'])[:100]}"
            )


if __name__ == "__main__":
    main()
