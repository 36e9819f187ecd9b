"""distnmf: distributed, out-of-core non-negative matrix factorization on Dask and Zarr.

Public names are loaded on first use (PEP 562), so ``from distnmf.client import Client``
does not import Dask: users of the client need not install the server or the engine.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "NMF": "distnmf.estimator",
    "fold_in": "distnmf.functional",
    "non_negative_factorization": "distnmf.functional",
    "factorize": "distnmf.factors",
    "Factors": "distnmf.factors",
    "open_factors": "distnmf.factors",
    "save_factors": "distnmf.factors",
    "Matrix": "distnmf.store",
    "MatrixWriter": "distnmf.matrixwriter",
    "open_matrix": "distnmf.store",
    "save_matrix": "distnmf.matrixwriter",
    "select_rank": "distnmf.rank",
    "RankReport": "distnmf.rank",
}

__all__ = sorted(_LAZY)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'distnmf' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
