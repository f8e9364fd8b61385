"""Unwind table build time, cold and warm, for Debian's libc and python3.11.

Cold: a fresh Python process parses the file (the figure the issue's targets are about:
libc <= 1 s, python3.11 <= 3 s); its imports are shown apart. Warm: a fresh process loads the
table from the disk cache by build ID (target <= 50 ms). References in the same run: binutils'
`readelf --debug-dump=frames-interp` on the same file (C, and it prints every row), and, in
the full run, pyelftools' CFI decoder on libc in this process (the library this parser replaces).
The page cache is warm for every figure: the files are read once before measuring.

    .venv/bin/python benchmarks/unwind.py            # full (make bench), about 2 minutes
    .venv/bin/python benchmarks/unwind.py --quick    # no pyelftools, fewer rounds
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILES = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/python3.11"]

CHILD = r"""
import json, sys, time
started = time.perf_counter()
from pathlib import Path
from antiprof_core.sources.unwind.build import build_table
from antiprof_core.sources.unwind.cache import TableCache
from antiprof_core.sources.unwind.elfsections import read_sections
imported = time.perf_counter()
path, cache_dir, mode = sys.argv[1:4]
cache = TableCache(Path(cache_dir))
if mode == "cold":
    table = build_table(path)
    cache.store(table)
else:
    table = cache.load(read_sections(path, unwind=False).build_id)
    assert table is not None, "not in the cache"
done = time.perf_counter()
print(json.dumps({"import": imported - started, "work": done - imported, "rows": len(table),
                  "bytes": table.size_bytes, "fdes": table.counts.get("fdes", 0)}))
"""


def child(path: str, cache_dir: str, mode: str) -> dict[str, float]:
    output = subprocess.run([sys.executable, "-c", CHILD, path, cache_dir, mode], capture_output=True, text=True,
                            check=True).stdout  # fmt: skip
    return json.loads(output)  # type: ignore[no-any-return]


def readelf_seconds(path: str) -> float:
    started = time.perf_counter()
    subprocess.run(["readelf", "--debug-dump=frames-interp", path], stdout=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def pyelftools_seconds(path: str) -> tuple[float, str]:
    """pyelftools decoding every CIE/FDE of .eh_frame into its rule table, as a reference."""
    from elftools.elf.elffile import ELFFile

    started = time.perf_counter()
    failed = decoded = 0
    with open(path, "rb") as stream:
        for entry in ELFFile(stream).get_dwarf_info().EH_CFI_entries():
            if hasattr(entry, "get_decoded"):
                try:
                    entry.get_decoded()
                    decoded += 1
                except Exception:  # its failures are part of the figure
                    failed += 1
    return time.perf_counter() - started, f"{decoded} entries decoded, {failed} failed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, no pyelftools reference")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    print(f"unwind table build, median of {rounds} fresh processes each; CPython {sys.version.split()[0]}")
    print(f"{'file':<34} {'rows':>7} {'KiB':>6} {'cold':>8} {'warm':>8} {'imports':>8} {'readelf':>8}  target")
    for path in FILES:
        if not Path(path).exists():
            print(f"{path}: not installed, skipped")
            continue
        Path(path).read_bytes()  # page cache
        with tempfile.TemporaryDirectory() as cache_dir:
            cold = [child(path, cache_dir, "cold") for _ in range(rounds)]
            warm = [child(path, cache_dir, "warm") for _ in range(rounds)]
        cold_s = statistics.median(run["work"] for run in cold)
        warm_s = statistics.median(run["work"] for run in warm)
        imports = statistics.median(run["import"] for run in cold)
        reference = statistics.median(readelf_seconds(path) for _ in range(rounds))
        target = 1.0 if "libc" in path else 3.0
        print(
            f"{path:<34} {cold[0]['rows']:>7} {cold[0]['bytes'] / 1024:>6.0f} {cold_s * 1000:>6.0f}ms "
            f"{warm_s * 1000:>6.1f}ms {imports * 1000:>6.0f}ms {reference * 1000:>6.0f}ms  "
            f"cold {cold_s / target:.2f}x of {target:.0f} s, warm {warm_s / 0.05:.2f}x of 50 ms, "
            f"{cold_s / reference:.1f}x readelf"
        )
    if not args.quick:
        seconds, outcome = pyelftools_seconds(FILES[0])
        import elftools

        print(f"pyelftools {elftools.__version__} CFI decode of {FILES[0]}: {seconds:.2f} s ({outcome})")


if __name__ == "__main__":
    main()
