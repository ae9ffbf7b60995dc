"""The log writer as a child process of the service (``python -m predictionlog``)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from predictionlog.retention import Retention

logger = logging.getLogger("nnserve.predictionlog")


class WriterProcess:
    """The log writer as a child process of this one (``python -m predictionlog``)."""

    def __init__(
        self,
        store_url: str,
        *,
        repository: Path | None = None,
        retention: Retention | None = None,
        drift_window: int = 2000,
        socket_path: Path | None = None,
        log_level: str = "warning",
        start_timeout: float = 30.0,
    ) -> None:
        self.socket_path = (
            socket_path or Path(tempfile.mkdtemp(prefix="nnserve-log-")) / "writer.sock"
        )
        retention = retention or Retention()
        command = [
            sys.executable, "-m", "predictionlog",
            "--socket", str(self.socket_path),
            "--store", store_url,
            "--drift-window", str(drift_window),
            "--parent", str(os.getpid()),
            "--log-level", log_level,
        ]  # fmt: skip
        if repository is not None:
            command += ["--repository", str(repository)]
        for option, value in (
            ("--max-age", retention.max_age_s),
            ("--max-rows", retention.max_rows),
            ("--max-bytes", retention.max_bytes),
        ):
            if value is not None:
                command += [option, str(value)]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + start_timeout
        while not self._accepting():
            if self.process.poll() is not None:
                assert self.process.stderr is not None
                with self.process.stderr:
                    error = self.process.stderr.read().strip()
                raise RuntimeError(f"the prediction log writer failed to start: {error}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the prediction log writer did not start in time")
            time.sleep(0.02)
        # from here on its log lines go where ours go
        self._relay = threading.Thread(target=self._forward_stderr, daemon=True)
        self._relay.start()

    def _accepting(self) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            probe.connect(str(self.socket_path))
        except OSError:
            return False
        finally:
            probe.close()
        return True

    def _forward_stderr(self) -> None:
        assert self.process.stderr is not None
        with self.process.stderr:
            for line in self.process.stderr:
                sys.stderr.write(line)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (it commits what it has), then wait; SIGKILL past ``timeout``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.error("the prediction log writer did not stop in %.0fs; killed", timeout)
                self.process.kill()
                self.process.wait()
        relay = getattr(self, "_relay", None)
        if relay is not None:
            relay.join(5.0)  # it closes the pipe at the end of the writer's output
        return self.process.returncode
