"""The service's commands of the ``distnmf`` CLI, registered through the ``distnmf.commands`` entry points."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    ssl_certfile: Annotated[Path | None, typer.Option("--ssl-certfile", help="Serve HTTPS with this certificate "
                                                      "(PEM); needed for a token sent over a network.")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option("--ssl-keyfile", help="Private key of --ssl-certfile.")] = None,
) -> None:
    """Run the HTTP service (job submission and queries on results).

    Example: distnmf serve --host 0.0.0.0 --port 8443 --ssl-certfile cert.pem --ssl-keyfile key.pem
    (with DISTNMF_API_TOKEN set: without a token the service binds to 127.0.0.1 only)
    """
    from distnmf_api.server import serve as run_server

    run_server(host, port, ssl_keyfile=ssl_keyfile, ssl_certfile=ssl_certfile)


def demo(
    directory: Annotated[Path, typer.Option("--out", help="Folder for the demo's data, results and pictures.")] = Path("demo-output"),
    small: Annotated[bool, typer.Option("--small", help="A quick, small version (seconds instead of minutes).")] = False,
) -> None:
    """Generate synthetic data, factorize it and write the pictures: the whole product in one go.

    Example: distnmf demo --out demo-output --small
    """
    from distnmf_api.demo import run_demo

    run_demo(directory, small)
