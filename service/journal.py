"""The prediction log as the service runs it: the writer process, this process's connection
to it, and the store it reads feedback joins from.

With worker processes (``python -m service``), the process manager starts the ONE writer
process before the workers (:func:`start_writer`) and keeps it running; each worker's
lifespan attaches to it (:meth:`Journal.attach`). A service built in-process (tests,
``create_app`` without a run folder) starts its own writer (:meth:`Journal.open`)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from predictionlog import PredictionLog, Store, WriterProcess, open_store
from service.settings import Settings

log = logging.getLogger("nnserve.journal")


def writer_socket(run_dir: Path) -> Path:
    return run_dir / "log.sock"


def start_writer(settings: Settings, socket_path: Path | None = None) -> WriterProcess:
    """The log writer process (it creates the store); ready when this returns."""
    return WriterProcess(
        settings.prediction_log_store(),
        repository=settings.model_repository,
        retention=settings.retention(),
        drift_window=settings.drift_window,
        socket_path=socket_path,
        log_level=settings.log_level,
    )


def restart_if_gone(writer: WriterProcess, settings: Settings) -> WriterProcess:
    """``writer``, or a new one on the same socket if it exited (its totals continue)."""
    code = writer.process.poll()
    if code is None:
        return writer
    log.error("the prediction log writer exited (status %s); starting it again", code)
    try:
        return start_writer(settings, writer.socket_path)
    except RuntimeError as exc:
        log.error("%s", exc)
        return writer


@dataclass
class Journal:
    settings: Settings
    #: The writer process when this process owns it (None: the process manager does).
    writer: WriterProcess | None
    log: PredictionLog
    store: Store

    @classmethod
    def open(cls, settings: Settings) -> Journal:
        """Start a writer process of this process's own, connect, open the store."""
        writer = start_writer(settings)
        try:
            return cls._connect(settings, writer.socket_path, writer)
        except BaseException:
            writer.stop()
            raise

    @classmethod
    def attach(cls, settings: Settings, socket_path: Path) -> Journal:
        """Connect to the writer the process manager runs for every worker."""
        return cls._connect(settings, socket_path, None)

    @classmethod
    def _connect(
        cls, settings: Settings, socket_path: Path, writer: WriterProcess | None
    ) -> Journal:
        client = PredictionLog(
            socket_path,
            sample=settings.prediction_log_sample,
            max_pending=settings.prediction_log_queue,
        )
        try:
            store = open_store(settings.prediction_log_store())
        except BaseException:
            client.close()
            raise
        return cls(settings, writer, client, store)

    def limits(self) -> dict[str, float]:
        retention = self.settings.retention()
        return {
            kind: float(value)
            for kind, value in (
                ("bytes", retention.max_bytes),
                ("rows", retention.max_rows),
                ("age_seconds", retention.max_age_s),
            )
            if value is not None
        }

    async def supervise(self, interval: float = 0.2) -> None:
        """Sends what waits in the backlog once the writer catches up; a writer that exits
        unexpectedly is started again on the same socket (meanwhile rows wait in the
        backlog, or are dropped and counted once it is full)."""
        while True:
            await asyncio.sleep(interval)
            self.log.send_backlog()
            if self.writer is not None and self.writer.process.poll() is not None:
                self.writer = await asyncio.to_thread(restart_if_gone, self.writer, self.settings)

    def close(self) -> None:
        """Flush what was accepted, stop the writer if it is this process's (it commits and
        exits), close the store."""
        self.log.close()
        figures = self.log.last_stats or {}
        if self.writer is not None:
            self.writer.stop(self.settings.drain_timeout or 30.0)
        self.store.close()
        log.info(
            "prediction log closed: %d written, %d dropped",
            figures.get("written", 0),
            figures.get("dropped", 0),
        )
