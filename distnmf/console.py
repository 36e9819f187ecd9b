"""What both command lines (``distnmf`` and ``distnmf ingest``) share: the one-line handling of
bad input and the connection to a Dask scheduler."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)

USER_ERRORS = (ValueError, KeyError, IndexError, OSError)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (a KeyError's without the quotes its str adds)."""
    text = exc.args[0] if type(exc) is KeyError and exc.args else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def user_errors(fn: F) -> F:
    """Turn bad-input exceptions into ``error: ...`` on stderr and exit status 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            typer.echo(f"error: {one_line(exc)}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def scheduler_client(address: str | None) -> Iterator[Any]:
    """A ``distributed.Client`` on ``address`` for the block's duration; None (work here) without one."""
    if address is None:
        yield None
        return
    from distributed import Client

    with Client(address, timeout="10s") as client:
        err.print(f"connected to {address}; dashboard: {client.dashboard_link}")
        yield client
