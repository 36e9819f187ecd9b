"""Start a Dask scheduler whose workers are SLURM jobs (dask-jobqueue), and keep it up.

Run it on a login node or in a long SLURM job; then point the service at the scheduler:

    python deploy/slurm/cluster.py --scheduler-file $HOME/distnmf-scheduler.json &
    DISTNMF_SCHEDULER=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['address'])" \
        $HOME/distnmf-scheduler.json) DISTNMF_STORAGE_ROOT=s3://bucket/distnmf \
        DISTNMF_API_TOKEN=... distnmf serve --host 0.0.0.0

Settings come from jobqueue.yaml (next to this file, or ~/.config/dask/); ``adapt`` bounds from
its ``distnmf.slurm.adapt`` section. Workers are submitted as the service's jobs need them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import dask.config
import yaml

HERE = Path(__file__).resolve().parent


def load_settings(path: Path = HERE / "jobqueue.yaml") -> dict:
    """Merge jobqueue.yaml into Dask's configuration; returns it as read."""
    settings = yaml.safe_load(path.read_text())
    dask.config.update(dask.config.config, settings, priority="new")
    return settings


def start_cluster(settings: dict, **overrides):
    """A SLURMCluster from the merged configuration, adapting within the configured bounds."""
    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(**overrides)
    cluster.adapt(**settings["distnmf"]["slurm"]["adapt"])
    return cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler-file", type=Path, required=True,
                        help="Where to write the scheduler's address for the service.")
    args = parser.parse_args()
    settings = load_settings()
    cluster = start_cluster(settings)
    args.scheduler_file.write_text(json.dumps({"address": cluster.scheduler_address,
                                               "dashboard": cluster.dashboard_link}))
    print(f"scheduler {cluster.scheduler_address}  dashboard {cluster.dashboard_link}", flush=True)
    try:
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()
        os.remove(args.scheduler_file)


if __name__ == "__main__":
    main()
