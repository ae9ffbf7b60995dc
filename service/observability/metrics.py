"""Every Prometheus metric of the service, defined here and nowhere else.

Observed at two choke points: :class:`service.http.edge.RequestObserver` (one per request)
and :meth:`Metrics.inference_done` (one per onnxruntime run). Each app owns its registry, so
tests can build many apps in one process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from modelrepo import ModelCard
from service.observability.multiprocess import ServiceProcesses, ServingOnly

if TYPE_CHECKING:
    from predictionlog import PredictionLog
    from service.observability.quality import Quality

#: Sub-millisecond to ten seconds.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class VersionMetrics:
    """The labelled children of one model version, resolved once (``.labels`` is not free)."""

    inference: Histogram
    queue: Histogram
    batch: Histogram
    samples: Counter
    runs: Counter
    queue_depth: Gauge
    classes: list[Counter] = field(default_factory=list)
    explain: Histogram | None = None


class Collected:
    """Figures kept outside prometheus_client and read at scrape time: the prediction log's
    (from its writer process: counts, size, input drift) and live accuracy and feedback
    from :class:`service.observability.quality.Quality`."""

    def __init__(self) -> None:
        self.quality: Quality | None = None
        self.log: PredictionLog | None = None
        self.limits: dict[str, float] = {}  # max_bytes, max_rows, max_age_seconds when bounded
        #: the writer's last answer: its totals survive its restarts (``Counters``), so a
        #: scrape while it restarts repeats them rather than going back to zero
        self._last: dict[str, Any] = {}

    def describe(self) -> Iterator[Metric]:
        return self._families(live=False)

    def collect(self) -> Iterator[Metric]:
        return self._families(live=True)

    def _writer_figures(self) -> dict[str, Any] | None:
        if self.log is None:
            return None
        figures = self.log.stats(timeout=1.0)
        if figures is not None:
            self._last = figures
        return figures

    def _families(self, live: bool) -> Iterator[Metric]:
        def counter(name: str, text: str, labels: list[str] | None = None) -> CounterMetricFamily:
            return CounterMetricFamily(f"nnserve_{name}", text, labels=labels)

        def gauge(name: str, text: str, labels: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"nnserve_{name}", text, labels=labels)

        mv = ["model", "version"]
        written = counter("prediction_log_written", "Predictions committed to the prediction log")
        dropped = counter(
            "prediction_log_dropped",
            "Predictions not logged: the writer fell behind (backlog full), was unreachable, "
            "or its store failed",
        )
        pruned = counter("prediction_log_pruned", "Predictions removed by the retention bounds")
        size = gauge(
            "prediction_log_bytes", "Bytes the prediction log uses (what its bound counts)"
        )
        rows = gauge("prediction_log_rows", "Predictions in the prediction log")
        oldest = gauge(
            "prediction_log_oldest_age_seconds", "Age of the oldest prediction in the log"
        )
        limit = gauge(
            "prediction_log_limit",
            "The prediction log's retention bounds, by kind (bytes, rows, age_seconds)",
            ["kind"],
        )
        accuracy = gauge(
            "live_accuracy", "Accuracy over the last feedback labels (sliding window)", mv
        )
        window = gauge("live_accuracy_window", "Feedback labels in the live-accuracy window", mv)
        drift = gauge(
            "input_drift_psi",
            "Population stability index of recent inputs vs the training split, per feature",
            [*mv, "feature"],
        )
        mvs = [*mv, "step"]
        forecast_mae = gauge(
            "forecast_mae",
            "A forecaster's live mean absolute error per horizon step (1 = next value), over "
            "the last actual values fed back (sliding window), in the series' units",
            mvs,
        )
        forecast_rmse = gauge(
            "forecast_rmse", "A forecaster's live root mean squared error per horizon step", mvs
        )
        forecast_actuals = gauge(
            "forecast_actuals", "Actual values in the live forecast-error window, per step", mvs
        )
        forecast_test_mae = gauge(
            "forecast_test_mae",
            "A forecaster's test MAE per horizon step, from model.json (the training baseline)",
            mvs,
        )
        figures = self._writer_figures() if live else None
        if live and self.log is not None:
            base = figures or self._last
            written.add_metric([], base.get("written", 0))
            dropped.add_metric([], base.get("dropped", 0))
            pruned.add_metric([], base.get("pruned", 0))
            for kind, value in self.limits.items():
                limit.add_metric([kind], value)
        if figures is not None:
            size.add_metric([], figures["bytes"])
            rows.add_metric([], figures["rows"])
            if figures["oldest"] is not None:
                oldest.add_metric([], max(0.0, time.time() - figures["oldest"]))
        if live and self.quality is not None:
            serving = self.quality.serving
            for model, version, value, n in self.quality.accuracy():
                accuracy.add_metric([model, str(version)], value)
                window.add_metric([model, str(version)], n)
            for model, version, feature, psi in (figures or {}).get("drift", []):
                if (model, version) in serving:
                    drift.add_metric([model, str(version), feature], psi)
            for e in self.quality.forecast_errors():
                labels = [e.model, str(e.version), str(e.step)]
                forecast_mae.add_metric(labels, e.mae)
                forecast_rmse.add_metric(labels, e.rmse)
                forecast_actuals.add_metric(labels, e.n)
            for e in self.quality.test_errors():
                forecast_test_mae.add_metric([e.model, str(e.version), str(e.step)], e.mae)
        yield from (written, dropped, pruned, size, rows, oldest, limit)
        yield from (accuracy, window, drift)
        yield from (forecast_mae, forecast_rmse, forecast_actuals, forecast_test_mae)


class Metrics:
    """``multiprocess``: the folder prometheus_client's multiprocess mode keeps its files in
    (``PROMETHEUS_MULTIPROC_DIR``, set before prometheus_client is imported): with several
    worker processes, each writes its values there and a scrape of any worker sums them."""

    def __init__(self, multiprocess: Path | None = None) -> None:
        self.multiprocess = multiprocess
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.collected = Collected()
        if multiprocess is None:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
            registry.register(self.collected)
            self._scraped = registry
        else:  # what a scrape renders: every worker's files, and the service-wide figures
            self._scraped = CollectorRegistry(auto_describe=False)
            collector = MultiProcessCollector(None, multiprocess)  # type: ignore[no-untyped-call]
            self._scraped.register(ServingOnly(collector, self.collected))
            self._scraped.register(self.collected)
            self._scraped.register(ServiceProcesses())
        mv = ["model", "version"]
        self.requests = Counter(
            "nnserve_requests",
            "HTTP requests answered, by protocol (v1, v2, explain, metrics, other), "
            "model, version and status code",
            ["protocol", "model", "version", "code"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "nnserve_request_duration_seconds",
            "Time from request start to response end",
            ["protocol", "model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "nnserve_requests_in_flight",
            "Requests being handled now",
            ["protocol"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        # client connections (service.http.connections): counted when shed, open ones and
        # the cap set by each worker's sweep (no per-request cost); summed over workers
        self.connections_shed = Counter(
            "nnserve_connections_shed",
            "Client connections closed by the server's limits, by reason: header_timeout, "
            "body_timeout (408), evicted_idle, evicted_slow (408; to make room at the cap), "
            "over_capacity (503 beyond NNSERVE_MAX_CONNECTIONS, or no head in time), refused "
            "(closed at accept)",
            ["reason"],
            registry=registry,
        )
        self.connections_open = Gauge(
            "nnserve_connections_open",
            "Open client connections",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.connections_limit = Gauge(
            "nnserve_connections_limit",
            "Connections served before 503 (NNSERVE_MAX_CONNECTIONS per worker, summed)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.queue_duration = Histogram(
            "nnserve_queue_duration_seconds",
            "Time a request waited before its inference ran",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_duration = Histogram(
            "nnserve_inference_duration_seconds",
            "onnxruntime run time of one batch",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "nnserve_batch_size",
            "Samples per onnxruntime run",
            mv,
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.samples = Counter(
            "nnserve_inferred_samples", "Samples inferred", mv, registry=registry
        )
        self.runs = Counter(
            "nnserve_inference_runs",
            "onnxruntime runs (samples / runs = mean batch size)",
            mv,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "nnserve_queue_depth",
            "Samples waiting for inference",
            mv,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.predictions = Counter(
            "nnserve_predictions", "Predicted class labels", [*mv, "label"], registry=registry
        )
        self.explain_duration = Histogram(
            "nnserve_explain_duration_seconds",
            "Time an explanation took, from admission to its explainer queue to the end of its "
            "batched occlusion run",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.models_loaded = Gauge(
            "nnserve_models_loaded",
            "Model versions loaded and serving",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.load_duration = Gauge(
            "nnserve_model_load_duration_seconds",
            "Time the last load of a version took (checks included)",
            mv,
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.load_failures = Counter(
            "nnserve_model_load_failures",
            "Versions refused at load time, by reason (each worker process checks, and counts, "
            "for itself)",
            ["model", "reason"],
            registry=registry,
        )
        self.feedback = Counter(
            "nnserve_feedback",
            "Feedback labels received, by whether the prediction was right",
            [*mv, "outcome"],
            registry=registry,
        )
        self.model_info = Gauge(
            "nnserve_model_info",
            "1 for each version serving, with its provenance as labels",
            [*mv, "kind", "sha256", "dataset", "test_accuracy", "origin"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        #: A counter of its own rather than a ``key`` label on nnserve_requests_total, whose
        #: labels dashboards and alerts depend on. Observed by ``service.http.auth``; ``key``
        #: is a configured key id or missing / invalid (bounded by the configuration).
        self.api_key_requests = Counter(
            "nnserve_api_key_requests",
            "Calls to routes that need an API key, by key id (or missing / invalid) and "
            "outcome (accepted, rejected)",
            ["key", "outcome"],
            registry=registry,
        )

    # -- model lifecycle -------------------------------------------------------------------
    def version_loaded(self, card: ModelCard, seconds: float) -> VersionMetrics:
        labels = (card.name, str(card.version))
        self.load_duration.labels(*labels).set(seconds)
        self.model_info.labels(*labels, *_info(card)).set(1)
        self.models_loaded.inc()
        return VersionMetrics(
            inference=self.inference_duration.labels(*labels),
            queue=self.queue_duration.labels(*labels),
            batch=self.batch_size.labels(*labels),
            samples=self.samples.labels(*labels),
            runs=self.runs.labels(*labels),
            queue_depth=self.queue_depth.labels(*labels),
            classes=[self.predictions.labels(*labels, label) for label in card.labels],
            explain=self.explain_duration.labels(*labels),
        )

    def version_unloaded(self, card: ModelCard) -> None:
        self.models_loaded.dec()
        if self.multiprocess is not None:
            return  # no removal in multiprocess mode: a scrape shows serving versions only
        self.queue_depth.remove(card.name, str(card.version))
        self.model_info.remove(card.name, str(card.version), *_info(card))

    def load_failed(self, model: str, reason: str) -> None:
        self.load_failures.labels(model, reason).inc()

    # -- the inference choke point ---------------------------------------------------------
    @staticmethod
    def inference_done(
        children: VersionMetrics, n_samples: int, seconds: float, predicted: np.ndarray | None
    ) -> None:
        children.inference.observe(seconds)
        children.batch.observe(n_samples)
        children.samples.inc(n_samples)
        children.runs.inc()
        if predicted is not None and children.classes:
            for index, count in enumerate(np.bincount(predicted, minlength=len(children.classes))):
                if count:
                    children.classes[index].inc(int(count))

    def render(self) -> bytes:
        return generate_latest(self._scraped)


def _info(card: ModelCard) -> tuple[str, str, str, str, str]:
    """``model_info``'s provenance labels: kind, sha256, dataset (or where the version came
    from when there is none: imported, derived), test accuracy (empty when unmeasured)."""
    provenance = card.provenance
    dataset = provenance.dataset.name if provenance.dataset else provenance.origin
    accuracy = f"{card.metrics.accuracy:.4f}" if card.metrics else ""
    return card.kind, card.onnx_sha256, dataset, accuracy, provenance.origin


__all__ = ["CONTENT_TYPE", "Metrics", "VersionMetrics"]
