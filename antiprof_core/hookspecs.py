"""The hooks a plugin may implement. Hooks run at start-up, never per window.

New hooks are added with new names; existing hooks grow by new arguments, never by renames.
"""

from __future__ import annotations

import pluggy

from antiprof_core.consumer import Register

PROJECT_NAME = "antiprof"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def antiprof_register_consumers(register: Register) -> None:
    """Offer consumer types: call ``register(ConsumerType(...))`` once for each."""
