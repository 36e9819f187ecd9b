"""GET /version: what is serving (no auth), so clients can check compatibility."""

from __future__ import annotations

import platform

import faiss
from fastapi import APIRouter

from distnmf import __version__
from distnmf.wire import VersionInfo

router = APIRouter(tags=["health"])

API_VERSION = "v1"


@router.get("/version", response_model=VersionInfo)
def version() -> VersionInfo:
    """The distnmf version, the API version and the versions of the libraries answering queries."""
    return VersionInfo(version=__version__, api=API_VERSION, python=platform.python_version(),
                       faiss=faiss.__version__)
