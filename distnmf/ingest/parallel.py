"""Ordered parallel map over the active Dask client, or in-process when there is none."""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from distnmf.runner import cluster_capacity

ClientArg = Any  # a distributed.Client, None (use the active one if any) or False (never)


def ordered_map(func: Callable[..., Any], items: Iterable[Any], *, client: Any, name: str,
                shared: tuple[Any, ...] = (), window: int | None = None) -> Iterator[Any]:
    """Yield ``func(item, *shared)`` for each item, in order.

    With a client, ``shared`` values are sent to every worker once, and at most ``window``
    tasks (default: twice the cluster's threads) are in flight, so results waiting to be
    written stay bounded. Task keys read
    ``<name>-<index>-<token>`` on the dashboard. An error in any task is raised here, and the
    remaining tasks are cancelled.
    """
    if client is None:
        for item in items:
            yield func(item, *shared)
        return
    if window is None:
        window = 2 * max(1, cluster_capacity(client).threads)
    token = uuid.uuid4().hex[:8]
    shared_futures = [client.scatter([value], broadcast=True)[0] for value in shared]
    pending: deque[Any] = deque()
    try:
        for i, item in enumerate(items):
            pending.append(client.submit(func, item, *shared_futures, key=f"{name}-{i}-{token}", pure=False))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        if pending:
            client.cancel(list(pending))
