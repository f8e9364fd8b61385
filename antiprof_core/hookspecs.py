"""The hooks a plugin may implement, in the manner of tox's ``tox/plugin/spec.py``.

Every hook runs at start-up or shut-down, never per window. Each implementation is called on its
own (see ``plugins.call_each``), so one plugin that raises is listed with its error and the
others go on. A hook grows by new arguments, never by renames: pluggy passes an implementation
only the arguments it names, so an implementation written against an older spec keeps working.
New hooks get new names.

Mark implementations with ``@antiprof_core.hookimpl``; a function without the marker is not a hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from antiprof_core.consumer import Register
    from antiprof_core.sources import AgentInfo, SourceRegister

PROJECT_NAME = "antiprof"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def antiprof_register_consumers(register: Register) -> None:
    """Offer consumer types (sinks).

    :param register: call ``register(ConsumerType(...))`` once for each type; a ``[consumers.NAME]``
        section with ``type = <its name>`` activates it.

    Called once when plugins are loaded, before the config is read, by every command.
    A type registered by two plugins is used by neither, and both are listed with the error.

    Since 0.1.0.
    """


@hookspec
def antiprof_register_sources(register: SourceRegister) -> None:
    """Offer window sources: where profile windows come from.

    :param register: call ``register(SourceType(...))`` once for each; ``[sampler] source = <its name>``
        selects it and ``[sampler.<its name>]`` holds its options, structured into its ``config_class``.

    Called once when plugins are loaded, before the config is read. The core's own sources
    (``bpf``, ``synthetic``, ``replay``) are registered through this hook too.

    Since 0.1.0.
    """


@hookspec
def antiprof_register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``antiprof`` command line.

    :param cli: the top-level ``click.Group``; call ``cli.add_command(command)``. A command whose
        name is already taken is refused and the plugin is listed with the error.

    Called once per process, when plugins are loaded: before ``antiprof --help`` lists the commands
    and before a name that is not a core command is looked up.

    Since 0.1.0.
    """


@hookspec
def antiprof_startup(agent_info: AgentInfo) -> None:
    """The agent is about to publish its first window.

    :param agent_info: the effective config, the host, the core version and the active consumers' names.

    Called by ``antiprof run`` and ``antiprof record`` after the consumers are built and the source
    has started. An implementation that raises is logged with its plugin's name; the agent goes on.

    Since 0.1.0.
    """


@hookspec
def antiprof_shutdown() -> None:
    """The agent has delivered its last window and closed its consumers.

    Called once, also after a failed run, if ``antiprof_startup`` was called. An implementation
    that raises is logged with its plugin's name.

    Since 0.1.0.
    """
