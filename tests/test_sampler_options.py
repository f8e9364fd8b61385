"""Sampler pieces that need no BPF: map sizing, CPU lists, and the C/Python counter contract."""

from __future__ import annotations

import re
from pathlib import Path

from antiprof_core.config import SamplerConfig
from antiprof_core.sources.bpf import COUNTER_NAMES, bpf_source, online_cpus, stack_map_size
from antiprof_core.units import Duration


def test_stack_maps_are_sized_from_frequency_cpus_and_window() -> None:
    assert stack_map_size(SamplerConfig(), cpus=2) == 4096  # 19 Hz x 2 x 10 s: the floor
    assert stack_map_size(SamplerConfig(frequency_hz=999, window=Duration(1.0)), cpus=2) == 8192
    assert stack_map_size(SamplerConfig(frequency_hz=999, window=Duration(60.0)), cpus=64) == 65536  # the cap
    assert stack_map_size(SamplerConfig(max_stacks=5000), cpus=2) == 8192  # a power of two, as BPF wants


def test_online_cpus_reads_ranges_and_lists(tmp_path: Path) -> None:
    online = tmp_path / "online"
    online.write_text("0-3,5,7-8\n")
    assert online_cpus(online) == [0, 1, 2, 3, 5, 7, 8]
    assert online_cpus(tmp_path / "missing") == []


def test_counter_slots_match_the_bpf_enum() -> None:
    source = bpf_source()
    enum_body = re.search(r"enum counter \{(.*?)\};", source, re.S)
    assert enum_body is not None
    names = re.findall(r"^\s*([A-Z_]+)(?: = 0)?,", enum_body.group(1), re.M)
    assert names[-1] == "COUNTER_SLOTS"
    assert [name.lower() for name in names[:-1]] == list(COUNTER_NAMES)


def test_the_program_ships_inside_the_package() -> None:
    assert "int on_sample(struct bpf_perf_event_data *ctx)" in bpf_source()
