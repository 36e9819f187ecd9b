"""distnmf: distributed, out-of-core non-negative matrix factorization on Dask and Zarr."""

from distnmf.estimator import NMF, fold_in
from distnmf.factors import Factors, open_factors, save_factors
from distnmf.store import Matrix, MatrixWriter, open_matrix, save_matrix

__all__ = ["NMF", "Factors", "Matrix", "MatrixWriter", "fold_in", "open_factors", "open_matrix",
           "save_factors", "save_matrix"]
__version__ = "0.1.0"
