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
    query_workers: Annotated[int | None, typer.Option("--query-workers", min=0, help="Processes answering similar, "
                             "transform and components queries beside the service's own, on the same port "
                             "(default: DISTNMF_QUERY_WORKERS, else one per core but one; 0: none).")] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log a line per request "
                                             "(costs ~10% of the throughput of fast queries).")] = True,
) -> None:
    """Run the HTTP service (job submission and queries on results).

    Example: distnmf serve --host 0.0.0.0 --port 8443 --ssl-certfile cert.pem --ssl-keyfile key.pem
    (with DISTNMF_API_TOKEN set: without a token the service binds to 127.0.0.1 only)
    """
    from distnmf_api.server import serve as run_server

    run_server(host, port, ssl_keyfile=ssl_keyfile, ssl_certfile=ssl_certfile, query_workers=query_workers,
               access_log=access_log)


def demo(
    directory: Annotated[Path, typer.Option("--out", help="Folder for the demo's data, results and pictures.")
                         ] = Path("demo-output"),
    small: Annotated[bool, typer.Option("--small", help="A quick, small version (seconds instead of minutes).")
                     ] = False,
) -> None:
    """Generate synthetic data, factorize it and write the pictures: the whole product in one go.

    Example: distnmf demo --out demo-output --small
    """
    from distnmf_api.demo import run_demo

    run_demo(directory, small)


def up(
    workers: Annotated[int, typer.Option("--workers", "-n", help="Worker processes (one thread each).")] = 2,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The service's data directory (SQLite, logs; "
                                           "also the stores unless --storage-root).")] = Path("distnmf-data"),
    storage_root: Annotated[str | None, typer.Option("--storage-root", help="Folder or URL (s3://bucket/prefix) "
                                                     "for matrices, factors and checkpoints.")] = None,
    memory_limit: Annotated[str, typer.Option("--memory-limit", help="Memory limit of each worker.")] = "2GiB",
    host: Annotated[str, typer.Option("--host", help="Interface every process listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="The service's port.")] = 8000,
    scheduler_port: Annotated[int, typer.Option("--scheduler-port", help="The scheduler's port.")] = 8786,
    dashboard_port: Annotated[int, typer.Option("--dashboard-port", help="The Dask dashboard's port.")] = 8787,
) -> None:
    """Start a Dask scheduler, N workers and the service as separate processes on this machine.

    The same topology as deploy/docker, deploy/kubernetes and deploy/slurm. Stops everything on
    Ctrl-C (or when one process exits). Logs go to DATA_DIR/logs/.

    Example: distnmf up --workers 2 --data-dir ./distnmf-data
    """
    import signal

    from distnmf_api.local import LocalDeployment

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `kill` stops the children too, as Ctrl-C does
    deployment = LocalDeployment(data_dir.resolve(), workers, memory_limit, host, scheduler_port, dashboard_port,
                                 port, storage_root)
    deployment.start()
    try:
        typer.echo(f"scheduler {deployment.scheduler_address}")
        typer.echo(f"dashboard {deployment.dashboard_url}")
        typer.echo(f"service   {deployment.service_url}")
        typer.echo(f"logs      {data_dir.resolve() / 'logs'}")
        typer.echo("ready (Ctrl-C stops everything)")
        exited = deployment.wait()
        typer.echo(f"{exited} exited; stopping the others", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        deployment.stop()
