"""numba's ``njit`` as distnmf's compiled kernels use it (:mod:`distnmf.hals_kernel`,
:mod:`distnmf.foldin_kernel`): no GIL held, so row blocks run in parallel threads, and the machine
code cached on disk (the first call in a fresh environment compiles for a few seconds, later
processes load the cache) where a writable cache location exists — beside the module, or
``NUMBA_CACHE_DIR`` — else compiled in each process (a read-only install and home, as in a
container with a read-only root)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba


def compiled(function: Callable[..., Any] | None = None, **options: Any) -> Any:
    """``numba.njit(nogil=True, **options)``, cached on disk when numba finds a writable place for it
    (it raises RuntimeError at decoration otherwise). Use bare (``@compiled``) or with options."""
    if function is None:
        return lambda f: compiled(f, **options)
    try:
        return numba.njit(cache=True, nogil=True, **options)(function)
    except RuntimeError:
        return numba.njit(nogil=True, **options)(function)
