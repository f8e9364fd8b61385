"""The BPF sampler, in parts: ``program`` (the C program's contract), ``loader`` and ``child``
(compiling apart), ``syscalls`` and ``maps`` (reading maps without libbcc), ``window`` (a pure
window builder) and ``sampler`` (the WindowSource that ties them together).
"""

from antiprof_core.sources.bpf.availability import bpf_unavailable_reason
from antiprof_core.sources.bpf.program import COUNTER_NAMES, bpf_source, online_cpus, stack_map_size
from antiprof_core.sources.bpf.sampler import BpfSampler

__all__ = ["COUNTER_NAMES", "BpfSampler", "bpf_source", "bpf_unavailable_reason", "online_cpus", "stack_map_size"]
