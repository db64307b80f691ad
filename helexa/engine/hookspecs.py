"""Hook specifications: the extension points of helexa. Specs only; implementations live in plugins.

Hooks only *register* things and are called synchronously; async behaviour belongs to the registered objects.
Hooks evolve by adding arguments (an implementation may accept fewer); a hook is never renamed or removed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from helexa.engine.harness import Harness

hookspec = pluggy.HookspecMarker("helexa")
hookimpl = pluggy.HookimplMarker("helexa")


@hookspec
def register_harnesses(register: Callable[[type[Harness]], None]) -> None:
    """Register engine harnesses.

    Call ``register(cls)`` once per :class:`helexa.Harness` subclass the plugin provides. Called once per
    process, before the configuration is checked against the installed harnesses. Do no I/O here.

    :param register: the callback; registering a name twice (in one or two plugins) is an error.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Attach extra subcommands to the ``helexa`` command-line group.

    Called once when the CLI starts, before arguments are parsed.

    :param cli: the top-level ``helexa`` click group; call ``cli.add_command(...)`` or use ``@cli.command()``.
    """
