"""Service settings, from ``NNSERVE_*`` environment variables; the defaults run out of the box."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from predictionlog import Retention
from predictionlog.store import POSTGRES_SCHEMES
from service.cpus import usable_cpus, worker_count
from service.keys import KeyRing, digest
from service.repository.policy import ModelPolicy, VersionPolicy, check_policy
from service.runtime.batcher import BatchConfig


class Settings(BaseSettings):
    # an invalid-settings error must not print the values: NNSERVE_ADMIN_TOKEN is one of them
    model_config = SettingsConfigDict(
        env_prefix="NNSERVE_", extra="ignore", hide_input_in_errors=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    #: gRPC (Open Inference Protocol, ``inference.GRPCInferenceService``) on this port, same
    #: host; 0 = off (the default: a port nobody asked for stays closed, and services started
    #: side by side, as the tests do, do not fight over one). Triton and KServe use 8001.
    grpc_port: int = Field(default=0, ge=0, le=65535)
    model_repository: Path = Path("models")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    #: Largest request body accepted; larger ones get 413 before they are read.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    #: Bearer token of the management API (repository extension); unset = API off (403).
    admin_token: SecretStr | None = None
    #: API keys of the inference, feedback and model metadata routes (README, "Access
    #: control"); off while neither this nor ``api_keys`` is set. A file of ``key_id:sha256``
    #: lines (``python -m service.keys new ID`` makes one), re-read within a second of a change.
    api_keys_file: Path | None = None
    #: API keys given inline, beside or instead of the file: ``id:sha256_hex,id2:sha256_hex``.
    api_keys: str | None = None
    #: With API keys on, ``/metrics`` needs a key too (default: open, for Prometheus scrapes).
    api_keys_protect_metrics: bool = False
    #: Worker processes serving requests (one event loop each), or ``auto``: one per CPU this
    #: process may use (``os.sched_getaffinity``).
    workers: int | Literal["auto"] = "auto"
    #: onnxruntime intra-op threads per session; unset: the usable CPUs divided among the
    #: workers (so that workers x threads <= CPUs), at least 1.
    session_threads: int | None = Field(default=None, ge=1)
    #: Threads per worker running onnxruntime batches (each model version runs one batch at
    #: a time, so this bounds how many versions run at once in one worker).
    inference_threads: int = Field(default=2, ge=1)
    #: Folder the process manager shares with its workers (log-writer socket, metrics files,
    #: model-control state); set by ``python -m service`` for its workers, not by users.
    run_dir: Path | None = None
    #: Compare reference outputs from model.json at load time (the self-check).
    self_check: bool = True
    #: A version folder with model.onnx and no model.json (as Triton users and KServe's
    #: storage initializer leave them): ``serve`` it with a card derived from the graph (no
    #: self-check; a warning, and ``origin="derived"`` on nnserve_model_info), or ``refuse``.
    bare_models: Literal["serve", "refuse"] = "serve"
    #: Which versions of each model to serve: latest:N, all, or specific:V1,V2,...
    version_policy: str = "latest:1"
    #: Seconds between repository scans for new or removed versions; 0 turns polling off.
    poll_interval: float = Field(default=5.0, ge=0)
    #: Dynamic batching: most samples per onnxruntime run ...
    max_batch_size: int = Field(default=32, ge=1)
    #: ... and how long a batch that already has company may wait for more (ms).
    max_batch_delay_ms: float = Field(default=0.0, ge=0)
    #: Samples that may wait per model version; beyond it, 503 with Retry-After.
    max_queue_size: int = Field(default=1024, ge=1)
    #: Deadline of a request unless its X-Request-Timeout-Ms header says otherwise; then 504.
    request_timeout_ms: float = Field(default=30_000, gt=0)
    #: Longest wait for in-flight requests at shutdown and for a retired version to drain.
    drain_timeout: float = Field(default=30.0, ge=0)
    #: Client connections (``service.http.connections``): seconds a request head may take,
    #: from the accept (or a kept-alive connection's next first byte); then 408 and close.
    header_timeout: float = Field(default=10.0, gt=0)
    #: Seconds a request body may take, from its head; then 408 and close.
    body_timeout: float = Field(default=30.0, gt=0)
    #: Seconds an idle connection is kept open between requests.
    keepalive_timeout: float = Field(default=5.0, ge=0)
    #: Seconds from its accept after which a connection's next response closes it (so that
    #: client pools rebalance over workers and replicas); 0 = no limit.
    keepalive_max_age: float = Field(default=300.0, ge=0)
    #: Open connections per worker process served before 503; unset: 4096, or what the
    #: open-file limit allows (it keeps descriptors for its files and health probes).
    max_connections: int | None = Field(default=None, ge=1)

    #: Folder for the service's own data (the SQLite prediction log).
    data_dir: Path = Path("data")
    #: Log predictions (id, time, model, version, inputs, outputs) for feedback and retraining.
    prediction_log: bool = True
    #: Share of predictions logged (0-1), decided per prediction.
    prediction_log_sample: float = Field(default=1.0, ge=0, le=1)
    #: Store URL: unset = SQLite (WAL) at <data_dir>/predictions.db; or postgresql://...
    prediction_log_url: str | None = None
    #: Predictions waiting for the log writer process when it falls behind; beyond it they
    #: are dropped and counted (never a request).
    prediction_log_queue: int = Field(default=10_000, ge=1)
    #: Retention: predictions older than this many seconds are removed (0 = no age bound).
    prediction_log_max_age: float = Field(default=7 * 24 * 3600, ge=0)
    #: Retention: the most predictions kept (0 = no row bound).
    prediction_log_max_rows: int = Field(default=0, ge=0)
    #: Retention: the most bytes the log may use (0 = no byte bound); 1 GB by default.
    prediction_log_max_bytes: int = Field(default=1_000_000_000, ge=0)
    #: Replicas of this service that may run at once (a Deployment's or autoscaler's most).
    #: Above 1 their prediction logs must be one: PostgreSQL, not a SQLite file per replica.
    replicas: int = Field(default=1, ge=1)
    #: Feedback labels per model version in the live-accuracy window.
    accuracy_window: int = Field(default=500, ge=1)
    #: Recent inputs (rows / time steps) per model version compared with the training split.
    drift_window: int = Field(default=2000, ge=1)
    #: Explanations (``:explain``): the most perturbed samples one request may run (beyond it,
    #: image patches get coarser, then a sequence's single cells are left out, then 413).
    explain_max_samples: int = Field(default=1024, ge=1)
    #: Explanations running at once per worker, each in a thread of its own (not the
    #: prediction batchers' threads) ...
    explain_threads: int = Field(default=1, ge=1)
    #: ... and how many more may wait; beyond that, 503 with Retry-After.
    explain_queue: int = Field(default=4, ge=0)

    def worker_count(self) -> int:
        return worker_count(self.workers)

    def intra_op_threads(self) -> int:
        return self.session_threads or max(1, usable_cpus() // self.worker_count())

    @field_validator("version_policy")
    @classmethod
    def _policy(cls, value: str) -> str:
        return check_policy(value)

    @model_validator(mode="after")
    def _shared_log(self) -> Settings:
        if self.replicas > 1 and self.prediction_log and not self.shared_log():
            raise ValueError(
                f"NNSERVE_REPLICAS={self.replicas} with the SQLite prediction log: each replica "
                "would log into a file of its own, and feedback sent to one replica could not "
                "find the predictions another one made; set NNSERVE_PREDICTION_LOG_URL="
                "postgresql://... (one log for every replica) or NNSERVE_PREDICTION_LOG=false"
            )
        return self

    @model_validator(mode="after")
    def _api_keys(self) -> Settings:
        self.key_ring()  # an unusable key list or file stops the start (KeyFileError)
        return self

    def key_ring(self) -> KeyRing | None:
        """The API keys, or None when access control is off. Raises ``KeyFileError``."""
        if self.api_keys_file is None and not self.api_keys:
            return None
        admin = self.admin_token
        refused = [digest(admin.get_secret_value().encode())] if admin else []
        return KeyRing(self.api_keys, self.api_keys_file, refused)

    def shared_log(self) -> bool:
        """Whether the prediction log is a server that several replicas can share."""
        return self.prediction_log_store().startswith(POSTGRES_SCHEMES)

    def prediction_log_store(self) -> str:
        return (
            self.prediction_log_url or f"sqlite:///{(self.data_dir / 'predictions.db').resolve()}"
        )

    def retention(self) -> Retention:
        return Retention(
            max_age_s=self.prediction_log_max_age or None,
            max_rows=self.prediction_log_max_rows or None,
            max_bytes=self.prediction_log_max_bytes or None,
        )

    def model_policy(self) -> ModelPolicy:
        return ModelPolicy(
            versions=VersionPolicy(self.version_policy),
            batching=BatchConfig(
                max_batch_size=self.max_batch_size,
                max_batch_delay_s=self.max_batch_delay_ms / 1000,
                max_queue_size=self.max_queue_size,
            ),
        )
