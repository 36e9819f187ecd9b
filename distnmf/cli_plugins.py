"""Commands other packages add to ``distnmf`` (entry point group ``distnmf.commands``), and
what such a command says when its package's dependencies are missing."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

from distnmf.console import user_errors

COMMANDS_GROUP = "distnmf.commands"


EXTRA_HINT = "pip install 'distnmf[server]'"


def _missing_extra(name: str, exc: ModuleNotFoundError) -> typer.Exit:
    typer.echo(f"error: `distnmf {name}` needs the server extra ({exc.name} is not installed): {EXTRA_HINT}",
               err=True)
    return typer.Exit(1)


def _plugin_command(name: str, load: Callable[[], Callable[..., Any]]) -> Callable[..., Any]:
    """The command ``name`` loaded by ``load``; a missing dependency (when loaded or run) names the extra."""
    try:
        command = load()
    except ModuleNotFoundError as exc:
        missing = exc

        def unavailable() -> None:
            raise _missing_extra(name, missing)

        unavailable.__doc__ = f"Unavailable: needs the server extra ({EXTRA_HINT})."
        return unavailable

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] in ("distnmf", "distnmf_api"):
                raise  # a bug, not a missing extra
            raise _missing_extra(name, exc) from None

    return run


def add_plugin_commands(app: typer.Typer) -> None:
    """Add to ``app`` the commands other packages register under the ``distnmf.commands`` entry point group.

    The service registers ``serve`` and ``demo`` this way, so this package never imports it;
    without the service's dependencies (the ``server`` extra) the command says what to install.
    """
    from importlib.metadata import entry_points

    for entry in entry_points(group=COMMANDS_GROUP):
        app.command(name=entry.name)(user_errors(_plugin_command(entry.name, entry.load)))
