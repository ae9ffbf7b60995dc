"""The prediction log as the service runs it: the writer process, this process's connection
to it, and the store it reads feedback joins from. Started and stopped by the lifespan."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from predictionlog import PredictionLog, Store, WriterProcess, open_store
from service.settings import Settings

log = logging.getLogger("nnserve.journal")


@dataclass
class Journal:
    settings: Settings
    writer: WriterProcess
    log: PredictionLog
    store: Store

    @classmethod
    def open(cls, settings: Settings) -> Journal:
        """Start the writer process (it creates the store), connect, open the store."""
        url = settings.prediction_log_store()
        writer = cls._start(settings)
        try:
            client = PredictionLog(
                writer.socket_path,
                sample=settings.prediction_log_sample,
                max_pending=settings.prediction_log_queue,
            )
            store = open_store(url)
        except BaseException:
            writer.stop()
            raise
        return cls(settings, writer, client, store)

    @staticmethod
    def _start(settings: Settings, socket_path: object = None) -> WriterProcess:
        return WriterProcess(
            settings.prediction_log_store(),
            repository=settings.model_repository,
            retention=settings.retention(),
            drift_window=settings.drift_window,
            socket_path=socket_path,  # type: ignore[arg-type]
            log_level=settings.log_level,
        )

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

    async def supervise(self, interval: float = 1.0) -> None:
        """Sends what waits in the backlog once the writer catches up; a writer that exits
        unexpectedly is started again on the same socket (meanwhile rows wait in the
        backlog, or are dropped and counted once it is full)."""
        while True:
            await asyncio.sleep(interval)
            self.log.send_backlog()
            code = self.writer.process.poll()
            if code is None:
                continue
            log.error("the prediction log writer exited (status %s); starting it again", code)
            try:
                self.writer = await asyncio.to_thread(
                    self._start, self.settings, self.writer.socket_path
                )
            except RuntimeError as exc:
                log.error("%s", exc)

    def close(self) -> None:
        """Flush what was accepted, stop the writer (it commits and exits), close the store."""
        self.log.close()
        figures = self.log.last_stats or {}
        self.writer.stop(self.settings.drain_timeout or 30.0)
        self.store.close()
        log.info(
            "prediction log closed: %d written, %d dropped",
            figures.get("written", 0),
            figures.get("dropped", 0) + self.log.dropped,
        )
