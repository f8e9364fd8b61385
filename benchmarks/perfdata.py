"""perf.data writer: throughput on synthetic windows, file size per sample, agreement with perf record.

    .venv/bin/python benchmarks/perfdata.py [--stacks 50000] [--depth 32] [--rounds 5] [--no-bpf] [--quick]

Prints figures and ratios against references measured in the same run:
1. records per second writing a 50k-stack, depth-32 window (target >= 300k/s on one core), in the
   default form (one SAMPLE per counted sample, time-ordered) and the compact one (one per stack),
   against the JSON sink's encoding of the same window;
1b. the same with a third of every stack made Python frames (each named through a slot and a
   symbol image), against the native-only window: steady state, and a first window's cost of
   building its image;
2. bytes per sample of our files against what `perf record -g` writes for the same stacks (its
   SAMPLE layout read from a real `perf record` file made in this run);
3. with real eBPF: the two-function workload profiled by `perf record -F 99 -g` and by the agent at
   the same time: function shares side by side, and bytes per sample of both files.

``--quick`` (10k stacks, 2 rounds) is for a look in a minute; ``make bench`` runs the full one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import attrs
from antiprof_perfdata.encoder import RecordEncoder
from antiprof_perfdata.perftool import parse_script, perf_path, run_perf
from antiprof_perfdata.pythonsyms import PythonSymbols
from antiprof_perfdata.writer import PerfDataFile

from antiprof_core.codec import window_to_dict
from antiprof_core.model import Frame, FrameKind, ProfileWindow
from antiprof_core.sources.synthetic import synthetic_window

TARGET_RECORDS_PER_SECOND = 300_000
SAMPLE_WORDS = {
    "IP": 1,
    "TID": 1,
    "TIME": 1,
    "ADDR": 1,
    "ID": 1,
    "STREAM_ID": 1,
    "CPU": 1,
    "PERIOD": 1,
    "IDENTIFIER": 1,
}


def best_rate(rounds: int, count: int, action) -> tuple[float, float]:
    """(best, median) of count / seconds over ``rounds`` runs of ``action``."""
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        rates.append(count / (time.perf_counter() - started))
    return max(rates), statistics.median(rates)


def writer_throughput(window: ProfileWindow, rounds: int, directory: Path) -> None:
    stacks, samples = len(window.samples), window.sample_count
    print("## Writer throughput (one core, steady state: the file already holds a window)")
    print(f"window: {stacks:,} unique stacks, {samples:,} samples, depth {len(window.samples[0].stack)}")
    print("| what | records per window | best records/s | median records/s | samples/s (best) |")
    print("|---|---|---|---|---|")
    memory = Path("/dev/shm") if Path("/dev/shm").is_dir() else directory
    page_cache: dict[bool, float] = {}
    for compact in (False, True):
        form = "compact = true" if compact else "default (a record per sample)"
        records = stacks if compact else samples
        encoder = RecordEncoder(compact)
        encoder.commit(encoder.encode(window))
        best, median = best_rate(rounds, records, lambda encoder=encoder: encoder.encode(window))
        print(f"| {form}: encode only | {records:,} | {best:,.0f} | {median:,.0f} | {best * samples / records:,.0f} |")
        for label, place in (("page cache (/dev/shm)", memory), ("disk-backed temp dir", directory)):
            with tempfile.TemporaryDirectory(dir=place) as temp:
                out = PerfDataFile(Path(temp) / "t.perf.data", window.host, window.frequency_hz, compact=compact)
                out.write(window)
                best, median = best_rate(rounds, records, lambda out=out: out.write(window))
                out.close()
            if label.startswith("page"):
                page_cache[compact] = best
            print(
                f"| {form}: encode + write, {label} | {records:,} | {best:,.0f} | {median:,.0f} |"
                f" {best * samples / records:,.0f} |"
            )
    json_rate, json_median = best_rate(
        rounds, stacks, lambda: json.dumps(window_to_dict(window), separators=(",", ":")).encode()
    )
    print(
        f"| reference: json sink encoding of the same window | {stacks:,} | {json_rate:,.0f} | {json_median:,.0f} |"
        f" {json_rate * samples / stacks:,.0f} |"
    )
    for compact, best in page_cache.items():
        form = "compact" if compact else "default"
        verdict = "met" if best >= TARGET_RECORDS_PER_SECOND else "NOT met"
        per_sample = best * samples / (stacks if compact else samples)
        versus_json = per_sample / (json_rate * samples / stacks)
        print(
            f"{form}: {best:,.0f} records/s = {verdict} against {TARGET_RECORDS_PER_SECOND:,}/s"
            f" ({best / TARGET_RECORDS_PER_SECOND:.2f}x); samples/s vs json: {versus_json:.2f}x"
        )
    print()


def python_shaped(window: ProfileWindow, functions: int = 2000) -> ProfileWindow:
    """``window`` with the native frames 4..14 of each stack made CPython frames (``functions`` names)."""
    samples = []
    for sample in window.samples:
        stack = list(sample.stack)
        for index in range(4, min(len(stack), 15)):
            frame = stack[index]
            if frame.kind is FrameKind.NATIVE:
                number = frame.address % functions
                stack[index] = Frame(
                    0x7F00_0000_0000 + number * 64, FrameKind.CPYTHON, f"func_{number}", 12, None,
                    f"/srv/app/module_{number % 50}.py", 10,
                )  # fmt: skip
        samples.append(attrs.evolve(sample, stack=tuple(stack)))
    return attrs.evolve(window, samples=tuple(samples))


def python_cost(window: ProfileWindow, rounds: int, directory: Path) -> None:
    print("## Python frames: encoding cost (a third of each stack Python, 2,000 functions)")
    shaped = python_shaped(window)
    python_frames = sum(f.kind is FrameKind.CPYTHON for s in shaped.samples for f in s.stack)
    print(f"Python frames in the window: {python_frames:,} of {sum(len(s.stack) for s in shaped.samples):,}")
    print("| what | first window (s) | best samples/s | median samples/s |")
    print("|---|---|---|---|")
    samples = window.sample_count
    rates = {}
    for label, candidate in (("native frames only (reference)", window), ("with Python frames", shaped)):
        encoder = RecordEncoder(False, PythonSymbols(directory / "images"))
        started = time.perf_counter()
        encoded = encoder.encode(candidate)
        first = time.perf_counter() - started
        encoder.commit(encoded)
        best, median = best_rate(rounds, samples, lambda encoder=encoder, c=candidate: encoder.encode(c))
        rates[label] = best
        extra = f" (image: {len(encoded.images[0].data):,} bytes)" if encoded.images else ""
        print(f"| {label}{extra} | {first:.3f} | {best:,.0f} | {median:,.0f} |")
    ratio = rates["with Python frames"] / rates["native frames only (reference)"]
    print(f"with Python frames: {ratio:.2f}x the native-only encoding rate")
    print()


def perf_record_sample_words(directory: Path) -> int:
    """Words in perf record -g's SAMPLE before the callchain, from a real file's sample_type."""
    data = directory / "layout.perf.data"
    subprocess.run(
        [perf_path(), "record", "-q", "-F", "99", "-g", "-o", str(data), "--", "true"],
        capture_output=True,
        check=True,
        env=dict(os.environ, PERF_BUILDID_DIR=str(directory / "buildid")),
    )
    header = run_perf(["report", "-i", str(data), "--header-only"], directory / "buildid").stdout
    match = re.search(r"sample_type = ([A-Z_|]+)", header)
    assert match, "no sample_type in perf record's header"
    return sum(SAMPLE_WORDS.get(name, 0) for name in match.group(1).split("|"))


def size_per_sample(window: ProfileWindow, directory: Path) -> None:
    words = perf_record_sample_words(directory)
    perf_bytes = 0
    for sample in window.samples:
        kernel = sum(1 for f in sample.stack if f.kind.value == "kernel")
        markers = (1 if kernel else 0) + (1 if kernel < len(sample.stack) else 0)
        perf_bytes += sample.count * 8 * (1 + words + 1 + markers + len(sample.stack))  # header, fields, nr, chain
    print("## File size per sample, synthetic stacks (whole file: records and header features)")
    print("| file | bytes | bytes per sample | vs perf record -g |")
    print("|---|---|---|---|")
    reference = perf_bytes / window.sample_count
    for compact in (False, True):
        path = directory / f"size-{compact}.perf.data"
        with PerfDataFile(path, window.host, window.frequency_hz, compact=compact) as out:
            out.write(window)
        size = path.stat().st_size
        label = "compact = true (a record per stack)" if compact else "perfdata default (a record per sample)"
        print(
            f"| {label} | {size:,} | {size / window.sample_count:.1f} | {size / window.sample_count / reference:.2f}x |"
        )
    print(f"| perf record -g, same stacks (SAMPLE records only) | {perf_bytes:,} | {reference:.1f} | 1.00x |")
    print(f"samples: {window.sample_count:,} in {len(window.samples):,} stacks (count 1-5 each)")
    print()


def side_by_side(directory: Path) -> None:
    from antiprof_core.sources.bpf import bpf_unavailable_reason
    from antiprof_core.testing.workloads import TWO_FUNCTION_SHARES, build_two_function_workload

    reason = bpf_unavailable_reason()
    if reason:
        print(f"## Side by side with perf record: skipped ({reason})")
        return
    binary = build_two_function_workload(directory / "workload")
    workload = subprocess.Popen([str(binary), "900"])  # outlives a slow BPF compile; killed after
    time.sleep(0.2)
    perf_dir, buildid = directory / "agent", directory / "buildid"
    config = directory / "agent.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [sampler]
            frequency_hz = 99
            window = "1s"
            pids = [{workload.pid}]
            [consumers.perfdata]
            output_dir = "{perf_dir}"
            """
        )
    )
    reference = directory / "perf-record.data"
    try:
        agent_command = [str(Path(sys.executable).parent / "antiprof"), "run", "-c", str(config), "--duration", "5s"]
        agent = subprocess.Popen(agent_command, stderr=subprocess.PIPE, text=True)
        assert agent.stderr is not None
        for line in agent.stderr:  # BCC compiles first (long on a busy machine): record the same 5 s
            if "sampling at" in line:
                break
        recorder = subprocess.Popen(
            [perf_path(), "record", "-q", "-F", "99", "-g", "-p", str(workload.pid), "-o", str(reference), "--",
             "sleep", "5"],
            env=dict(os.environ, PERF_BUILDID_DIR=str(buildid)),
        )  # fmt: skip
        agent.communicate(timeout=600)
        recorder.wait(timeout=60)
        if agent.returncode != 0:
            raise RuntimeError(f"antiprof run failed with {agent.returncode}")
    finally:
        workload.kill()
        workload.wait()
    [ours] = perf_dir.glob("*.perf.data")
    print("## Side by side: two-function workload, perf record -F 99 -g and the agent at the same time")
    print("| function | truth | agent (perfdata) | perf record | difference |")
    print("|---|---|---|---|---|")
    shares, counts = {}, {}
    for label, path in (("agent", ours), ("perf", reference)):
        samples = parse_script(run_perf(["script", "-i", str(path)], buildid).stdout)
        total = sum(s.period for s in samples) or 1
        shares[label] = {
            name: sum(s.period for s in samples if any(f.symbol == name for f in s.frames)) / total
            for name in TWO_FUNCTION_SHARES
        }
        counts[label] = sum(s.period for s in samples) // (1_000_000_000 // 99) if label == "agent" else len(samples)
    for name, truth in TWO_FUNCTION_SHARES.items():
        agent_share, perf_share = shares["agent"][name], shares["perf"][name]
        difference = abs(agent_share - perf_share) * 100
        print(f"| {name} | {truth:.1%} | {agent_share:.1%} | {perf_share:.1%} | {difference:.1f} points |")
    agent_size, perf_size = ours.stat().st_size, reference.stat().st_size
    print()
    print("| file | bytes | samples | bytes per sample |")
    print("|---|---|---|---|")
    print(f"| agent perf.data | {agent_size:,} | {counts['agent']:,} | {agent_size / max(counts['agent'], 1):.1f} |")
    print(f"| perf record -g | {perf_size:,} | {counts['perf']:,} | {perf_size / max(counts['perf'], 1):.1f} |")
    ratio = (agent_size / max(counts["agent"], 1)) / (perf_size / max(counts["perf"], 1))
    print(f"ratio agent/perf record bytes per sample: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", type=int, default=50_000)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-bpf", action="store_true", help="skip the side-by-side run with perf record")
    parser.add_argument("--quick", action="store_true", help="10k stacks, 2 rounds: a look in a minute")
    args = parser.parse_args()
    if args.quick:
        args.stacks, args.rounds = min(args.stacks, 10_000), min(args.rounds, 2)
    window = synthetic_window(processes=50, stacks=args.stacks, depth=args.depth, seed=7)
    with tempfile.TemporaryDirectory(prefix="antiprof-bench-") as temp:
        directory = Path(temp)
        writer_throughput(window, args.rounds, directory)
        python_cost(window, args.rounds, directory)
        size_per_sample(window, directory)
        if not args.no_bpf:
            side_by_side(directory)


if __name__ == "__main__":
    main()
