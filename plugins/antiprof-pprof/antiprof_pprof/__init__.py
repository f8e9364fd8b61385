"""antiprof-pprof: profile windows as gzip'd pprof files and a live endpoint for ``go tool pprof``."""

from __future__ import annotations

from antiprof_core import Consumer, ConsumerContext, ConsumerType, hookimpl
from antiprof_core.consumer import Register
from antiprof_pprof.config import PprofConfig
from antiprof_pprof.encoder import ProfileBuilder, build_profile, encode_profile
from antiprof_pprof.sink import PprofSink, PprofWriteError

__all__ = [
    "PprofConfig",
    "PprofSink",
    "PprofWriteError",
    "ProfileBuilder",
    "antiprof_register_consumers",
    "build_profile",
    "encode_profile",
]


def _make(config: PprofConfig, context: ConsumerContext) -> Consumer:
    return PprofSink(config, context)


@hookimpl
def antiprof_register_consumers(register: Register) -> None:
    register(ConsumerType("pprof", PprofConfig, _make, "gzip'd pprof per window; live /debug/pprof/profile"))
