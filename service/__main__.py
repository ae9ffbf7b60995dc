"""``python -m service [--workers N]``: serve the model repository (settings: NNSERVE_*).

``python -m service --model_name NAME --model_dir DIR [--http_port PORT]``: serve the one
model in DIR under NAME, as KServe runs a serving runtime (``modelrepo.single``; the
ClusterServingRuntime in deploy/kubernetes/kserve passes exactly these arguments).

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
    kserve = parser.add_argument_group("one model, as KServe starts a serving runtime")
    kserve.add_argument("--model_name", help="serve the model in --model_dir under this name")
    kserve.add_argument(
        "--model_dir",
        type=Path,
        help="its folder (KServe: /mnt/models): version folders, or model.onnx with or "
        "without model.json",
    )
    kserve.add_argument("--http_port", type=int, help="the port (default NNSERVE_PORT)")
    args = parser.parse_args(argv)
    if (args.model_name is None) != (args.model_dir is None):
        parser.error("--model_name and --model_dir go together")
    if args.http_port is not None:
        os.environ["NNSERVE_PORT"] = str(args.http_port)
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
        if args.model_dir is not None:
            from modelrepo import RepositoryError
            from modelrepo.single import mirror

            try:
                root = mirror(args.model_dir, args.model_name, run_dir / "models")
            except RepositoryError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            os.environ["NNSERVE_MODEL_REPOSITORY"] = str(root)
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
