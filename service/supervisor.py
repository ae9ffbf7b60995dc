"""The process manager: gunicorn runs the workers (uvicorn's worker class, one event loop
each) and, beside them, the one prediction-log writer process they all feed.

Why gunicorn and not uvicorn's own ``--workers``: both replace a dead worker, but gunicorn's
master has the hooks this service needs (start the log writer before the workers fork,
clean a dead worker's metrics files the moment it is reaped, stop the writer only after
every worker has drained), a heartbeat that replaces a hung worker, and a graceful
shutdown bounded by a timeout. Throughput is the same (measured: README, "Workers").

Started by ``python -m service`` after it has set ``PROMETHEUS_MULTIPROC_DIR`` and the run
folder (``NNSERVE_RUN_DIR``), so that prometheus_client loads in multiprocess mode.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from prometheus_client import multiprocess
from uvicorn_worker import UvicornWorker

from predictionlog import WriterProcess
from service.http.connections import ConnectionLimits, connection_class
from service.journal import restart_if_gone, start_writer, writer_socket
from service.observability.logs import configure
from service.settings import Settings

log = logging.getLogger("nnserve.supervisor")


class Worker(UvicornWorker):  # type: ignore[misc]
    """uvicorn settings of the one-process service, in a gunicorn worker."""

    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 (the base class's attribute)
        "loop": "auto",
        "http": "httptools",  # service.http.connections's subclass of it, set below
        "lifespan": "on",
        "access_log": False,
        "proxy_headers": False,  # nothing here reads client addresses; skip that middleware
        "server_header": False,  # two headers fewer to build on every response
        "date_header": False,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        drain = self.app.settings.drain_timeout  # in-flight requests finish within it
        self.config.timeout_graceful_shutdown = int(drain) or None
        # httptools with read deadlines, a connection cap and keep-alive limits (its own
        # keep-alive timeout: NNSERVE_KEEPALIVE_TIMEOUT, not gunicorn's ``keepalive``)
        self.config.http = connection_class(ConnectionLimits.of(self.app.settings))


class Supervisor(Arbiter):  # type: ignore[misc]
    """gunicorn's arbiter, which also keeps the log writer process running."""

    def manage_workers(self) -> None:
        super().manage_workers()
        service: Service = self.app
        if service.writer is not None:
            service.writer = restart_if_gone(service.writer, service.settings)


class Service(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        assert settings.run_dir is not None, "python -m service sets the run folder"
        self.settings = settings
        self.writer: WriterProcess | None = None
        super().__init__()

    def load_config(self) -> None:
        settings = self.settings
        drain = settings.drain_timeout
        for key, value in {
            "bind": [f"{settings.host}:{settings.port}"],
            "workers": settings.worker_count(),
            "worker_class": f"{__name__}.Worker",
            # a worker's startup (loading and self-checking every model) sends no heartbeat
            "timeout": 120,
            # SIGTERM: workers stop accepting and finish what is in flight, for this long
            "graceful_timeout": int(drain) + 5 if drain else 30,
            "backlog": 2048,
            "loglevel": settings.log_level,
            "accesslog": None,
            "errorlog": "/dev/null",  # until on_starting hands gunicorn.error to ours
            "proc_name": "nnserve",
            "control_socket_disable": True,  # gunicorn's would live in $HOME
            "on_starting": self._on_starting,
            "child_exit": self._child_exit,
            "on_exit": self._on_exit,
        }.items():
            self.cfg.set(key, value)

    def load(self) -> Any:  # in each worker, after the fork
        from service.app import create_app

        return create_app(self.settings)

    def run(self) -> None:
        Supervisor(self).run()

    # -- hooks (in the master) ---------------------------------------------------------------
    def _on_starting(self, server: Arbiter) -> None:
        configure(self.settings.log_level, self.settings.log_format)  # gunicorn's lines too
        if self.settings.prediction_log:
            assert self.settings.run_dir is not None
            self.writer = start_writer(self.settings, writer_socket(self.settings.run_dir))

    def _child_exit(self, server: Arbiter, worker: Any) -> None:
        """A worker is gone: its live gauges leave the sums (its counters stay counted)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]

    def _on_exit(self, server: Arbiter) -> None:
        """Every worker has drained and flushed its rows: the writer commits and stops."""
        if self.writer is not None:
            self.writer.stop(self.settings.drain_timeout or 30.0)
            self.writer = None
