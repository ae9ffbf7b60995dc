"""``python -m service [--workers N]``: serve the model repository (settings: NNSERVE_*).

N worker processes (default ``NNSERVE_WORKERS=auto``: one per usable CPU) under gunicorn
(``service.supervisor``), which also runs the one prediction-log writer process. Their
shared files (the writer's socket, model-control state, and with several workers the
metrics of every worker) live in a run folder made here and removed at exit.

With several workers, prometheus_client runs in multiprocess mode (every worker writes its
values into mapped files, a scrape of any worker sums them); it must see
``PROMETHEUS_MULTIPROC_DIR`` before it is first imported, so nothing of the service is
imported before that is set. With one worker there is nothing to sum: its metrics stay in
memory, which costs each request less (README, "Workers").
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from service.cpus import worker_count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workers",
        help="worker processes: a number, or auto (one per usable CPU); "
        "default NNSERVE_WORKERS, else auto",
    )
    args = parser.parse_args(argv)
    if args.workers:
        os.environ["NNSERVE_WORKERS"] = args.workers
    run_dir = Path(tempfile.mkdtemp(prefix="nnserve-run-", dir=_memory_folder()))
    owner = os.getpid()  # workers are forked in here: only this process removes the folder
    try:
        os.environ["NNSERVE_RUN_DIR"] = str(run_dir)
        try:
            workers = worker_count(os.environ.get("NNSERVE_WORKERS", "auto"))
        except ValueError as exc:
            print(f"error: NNSERVE_WORKERS: {exc}", file=sys.stderr)
            return 2
        if workers > 1:
            (run_dir / "metrics").mkdir()
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(run_dir / "metrics")
        else:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

        from pydantic import ValidationError

        from service.observability.logs import configure
        from service.settings import Settings
        from service.supervisor import Service

        try:
            settings = Settings()
        except ValidationError as exc:
            print(f"error: invalid settings: {exc}", file=sys.stderr)
            return 2
        configure(settings.log_level, settings.log_format)
        Service(settings).run()
    finally:
        if os.getpid() == owner:
            shutil.rmtree(run_dir, ignore_errors=True)
    return 0


def _memory_folder() -> str | None:
    """/dev/shm when writable: every worker writes its metrics into mapped files there on
    each request, and on a disk-backed folder the kernel would keep writing them back
    (measured: 15 % of single-core throughput). Else the system's temporary folder."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


if __name__ == "__main__":
    sys.exit(main())
