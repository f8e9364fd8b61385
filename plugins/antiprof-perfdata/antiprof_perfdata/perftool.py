"""Reading our files back with the real ``perf``: the proof every feature is tested by.

Used by the tests and ``benchmarks/perfdata.py``; needs Debian's ``perf`` (linux-perf) on PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from attrs import frozen

_SAMPLE_LINE = re.compile(r"^(?P<comm>\S.*?)\s+(?P<tid>\d+)(?:/\d+)?\s+(?:\[\d+\]\s+)?[\d.]+:\s+(?P<period>\d+)\s+\S+:")
_FRAME_LINE = re.compile(r"^\s+(?P<address>[0-9a-f]+)\s+(?P<symbol>.*?)\s+\((?P<dso>.*)\)$")
_OFFSET = re.compile(r"\+0x[0-9a-f]+$")


class PerfNotFound(RuntimeError):
    """perf is not installed."""


@frozen
class PerfResult:
    returncode: int
    stdout: str
    stderr: str


@frozen
class ScriptFrame:
    address: int
    symbol: str | None  # None for [unknown]
    dso: str


@frozen
class ScriptSample:
    comm: str
    tid: int
    period: int
    frames: tuple[ScriptFrame, ...]  # leaf first

    @property
    def leaf(self) -> str | None:
        return self.frames[0].symbol if self.frames else None


def perf_path() -> str:
    found = shutil.which("perf")
    if found is None:
        raise PerfNotFound("perf is not installed: apt-get install linux-perf")
    return found


def run_perf(
    args: Sequence[str],
    buildid_dir: Path,
    stdin: bytes | None = None,
    timeout: float = 120.0,
    cwd: Path | None = None,
) -> PerfResult:
    """Run ``perf ARGS`` with its build-id cache in ``buildid_dir`` (never the user's ~/.debug).

    perf 6.1 takes its cache from ``buildid.dir`` in ``~/.perfconfig`` or ``$HOME/.debug`` and
    ignores a ``PERF_BUILDID_DIR`` it is given (it only sets it for its child scripts): so
    ``HOME`` is ``buildid_dir`` too, and the cache is ``buildid_dir/.debug``.
    """
    env = dict(os.environ, PERF_BUILDID_DIR=str(buildid_dir), HOME=str(buildid_dir), PERF_PAGER="cat")
    done = subprocess.run(
        [perf_path(), *args], input=stdin, capture_output=True, env=env, timeout=timeout, check=False, cwd=cwd
    )
    return PerfResult(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))


def parse_script(text: str) -> list[ScriptSample]:
    """``perf script`` default output (one header line, then one line per frame) -> samples."""
    samples: list[ScriptSample] = []
    header: re.Match[str] | None = None
    frames: list[ScriptFrame] = []

    def finish() -> None:
        if header is not None:
            samples.append(ScriptSample(header["comm"], int(header["tid"]), int(header["period"]), tuple(frames)))

    for line in text.splitlines():
        if not line.strip():
            continue
        frame = _FRAME_LINE.match(line) if line[0].isspace() else None
        if frame is not None:
            symbol = _OFFSET.sub("", frame["symbol"])
            frames.append(
                ScriptFrame(int(frame["address"], 16), None if symbol == "[unknown]" else symbol, frame["dso"])
            )
            continue
        sample = _SAMPLE_LINE.match(line)
        if sample is not None:
            finish()
            header, frames = sample, []
    finish()
    return samples


def leaf_shares(samples: Iterable[ScriptSample]) -> dict[str | None, float]:
    """Each leaf function's share of the total period (what ``perf report --no-children`` shows)."""
    totals: dict[str | None, int] = defaultdict(int)
    for sample in samples:
        totals[sample.leaf] += sample.period
    grand = sum(totals.values()) or 1
    return {symbol: period / grand for symbol, period in totals.items()}


def report_shares(text: str) -> dict[str, float]:
    """``perf report --stdio --no-children --sort sym`` lines ``12.34%  [.] name`` -> {name: 0.1234}."""
    shares = {}
    for match in re.finditer(r"^\s+([\d.]+)%\s+\[[.k]\]\s+(\S+)", text, re.MULTILINE):
        shares[match.group(2)] = float(match.group(1)) / 100
    return shares
