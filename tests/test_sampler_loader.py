"""Compiling apart, on real BPF: the agent never maps BCC or LLVM, start-up says when it compiles
and when it is attached, and the child's failures reach the agent as one line."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pytest

from antiprof_core.config import SamplerConfig
from antiprof_core.host import read_host
from antiprof_core.sources import SourceUnavailable
from antiprof_core.sources.bpf import BpfSampler
from antiprof_core.testing import require_bpf
from antiprof_core.units import Duration

pytestmark = pytest.mark.bpf

AGENT_SIDE = """
import json, logging, re, sys, time
from antiprof_core.config import SamplerConfig
from antiprof_core.host import read_host
from antiprof_core.sources.bpf import BpfSampler
from antiprof_core.units import Duration

sampler = BpfSampler(SamplerConfig(frequency_hz=199, window=Duration(1.0)), read_host(), logging.getLogger("t"))
sampler.start()
deadline = time.monotonic() + 30
samples = 0
while samples == 0 and time.monotonic() < deadline:
    time.sleep(0.5)
    samples = sampler.collect().sample_count
compiler = re.compile(r"libbcc|libLLVM|libclang", re.I)
mapped = sorted({line.split()[-1] for line in open("/proc/self/maps") if compiler.search(line)})
print(json.dumps({"samples": samples, "mapped": mapped, "bcc_imported": "bcc" in sys.modules,
                  "peak": sampler.compiler_peak_bytes}))
sampler.close()
"""


def sampler(config: SamplerConfig | None = None) -> BpfSampler:
    return BpfSampler(config or SamplerConfig(), read_host(), logging.getLogger("antiprof.test.loader"))


def test_the_agent_process_never_maps_bcc_or_llvm_yet_samples() -> None:
    require_bpf()
    result = subprocess.run([sys.executable, "-c", AGENT_SIDE], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] > 0
    assert report["mapped"] == []
    assert report["bcc_imported"] is False
    assert report["peak"] > 50 * 1024 * 1024  # the child, not the agent, held LLVM


def test_start_up_logs_the_compile_and_the_attach_and_the_default_config_does_not_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    require_bpf()
    caplog.set_level(logging.INFO, logger="antiprof.test.loader")
    source = sampler(SamplerConfig(window=Duration(1.0)))  # the default 19 Hz, maps and stack depth
    source.start()
    try:
        for _ in range(2):
            time.sleep(1.0)
            source.collect()
    finally:
        source.close()
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0].startswith("compiling the BPF program in a child process")
    attached = next(message for message in messages if message.startswith("sampling attached in "))
    assert "compiler child peak" in attached and "4096 stacks per map set" in attached
    assert source.attached_seconds > 0
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


@pytest.mark.parametrize(
    ("program", "expected"),
    [
        (
            "int on_sample(struct bpf_perf_event_data *ctx) { return undefined_thing; }",
            "error: use of undeclared identifier 'undefined_thing'",
        ),
        (
            "int on_sample(struct bpf_perf_event_data *ctx) { volatile int i = 0; while (1) { i++; } return 0; }",
            "Failed to load BPF program b'on_sample': Invalid argument: infinite loop detected",
        ),
    ],
    ids=["compile-error", "verifier-rejects"],
)
def test_a_broken_program_fails_start_with_one_line(program: str, expected: str) -> None:
    require_bpf()
    source = sampler()
    source.program_text = program
    with pytest.raises(SourceUnavailable) as failure:
        source.start()
    message = str(failure.value)
    assert message.startswith("the BPF program failed to compile or load: ")
    assert expected in message
    assert "\n" not in message


def test_missing_kernel_headers_fail_start_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    require_bpf()
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "/nonexistent-kernel-headers")  # where BCC looks, inherited by the child
    with pytest.raises(SourceUnavailable) as failure:
        sampler().start()
    message = str(failure.value)
    assert message.startswith("the BPF program failed to compile or load: ")
    assert "/nonexistent-kernel-headers" in message
    assert "\n" not in message
