"""The storage seam: what every store can do, and :func:`open_store`, which picks one by URL.

Two implementations: :class:`~predictionlog.sqlite.SQLiteStore` (the embedded default, one
file in WAL mode) and :class:`~predictionlog.postgres.PostgresStore` (when several replicas
share one log). The service writes through a :class:`~predictionlog.writer.PredictionLog`;
the retraining pipeline reads with :meth:`Store.labelled`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote

import numpy as np

from predictionlog.records import Feedback, Prediction, Stored
from predictionlog.retention import Usage
from predictionlog.sqlite import SQLiteStore


class Store(Protocol):
    """A prediction log plus feedback store. Implementations are safe to share between threads."""

    #: Seconds between measurements (``usage``) worth their cost.
    measure_every: float

    def write_predictions(self, rows: Sequence[Prediction]) -> None:
        """Store ``rows`` in one transaction; an id already stored is ignored (idempotent)."""
        ...

    def write_batches(
        self, batches: Sequence[Stored], pause: Callable[[], object] | None = None
    ) -> None:
        """Batches already encoded (``records.stored``), in one transaction; ``pause`` is
        called after each."""
        ...

    def usage(self) -> Usage:
        """Rows, bytes (what the retention bound counts) and the oldest prediction's time."""
        ...

    def prune_oldest(
        self, n: int, older_than: float | None = None, pause: Callable[[], object] | None = None
    ) -> int:
        """Remove the oldest batches holding at most ``n`` predictions (or the oldest one, if
        it holds more; only those before ``older_than`` if set) with their feedback, in one
        transaction; the predictions removed. ``pause`` is called after each batch."""
        ...

    def reclaim(self, keep: int = 0) -> None:
        """Give space freed by pruning back beyond ``keep`` bytes, kept for new rows
        (SQLite: incremental vacuum)."""
        ...

    def saturated(self, busy: bool) -> None:
        """The writer's hint: requests queue anyway (``pacing``), so a long uninterrupted
        step costs none of them a wait (SQLite checkpoints its WAL in larger steps)."""
        ...

    def get_prediction(self, id: str) -> Prediction | None:
        """The prediction logged under ``id``, or None."""
        ...

    def record_feedback(self, feedback: Feedback) -> bool:
        """Store ground truth for a logged prediction.

        True if newly stored, False if the same label was already recorded (idempotent).
        Raises UnknownPrediction if the id was never logged, FeedbackConflict if a different
        label is stored.
        """
        ...

    def labelled(self, model: str) -> list[tuple[Prediction, str]]:
        """Every logged prediction of ``model`` (any version) that has feedback, with the
        feedback label, oldest prediction first."""
        ...

    def count_predictions(self, model: str | None = None) -> int:
        """How many predictions are logged (of ``model``, or of all models)."""
        ...

    def recent_outcomes(self, model: str, version: int, window: int) -> tuple[int, int]:
        """(right, labelled) over the last ``window`` feedback labels of one model version:
        live accuracy, the same whichever service process or replica asks."""
        ...

    def record_actuals(self, id: str, start: int, values: Sequence[float], time: float) -> int:
        """Actual values of a logged forecast from horizon step ``start`` (0-based), in as
        many pieces as they come; the number newly stored (a repeat stores nothing). Raises
        UnknownPrediction, or FeedbackConflict if a step already has another value."""
        ...

    def recent_actuals(
        self, model: str, version: int, window: int
    ) -> list[tuple[np.ndarray, int, float]]:
        """(forecast, step, actual) of the last ``window`` actual values of one version."""
        ...

    def with_actuals(self, model: str) -> list[tuple[Prediction, dict[int, float]]]:
        """Every logged forecast of ``model`` with actual values (by 0-based step)."""
        ...

    def close(self) -> None:
        """Release the connection(s). Idempotent."""
        ...


#: URLs of a PostgreSQL store: one log that several replicas can share.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def sqlite_path(url: str | os.PathLike[str]) -> Path:
    """The database file a SQLite URL or plain path names (``ValueError`` when it names none).

    ``sqlite:///abs/path.db`` is absolute, ``sqlite:relative.db`` relative to the working
    folder, and anything without a scheme is a filesystem path.
    """
    text = os.fspath(url)
    if text.startswith("sqlite:"):
        rest = text[len("sqlite:") :]
        if rest.startswith("//"):
            if not rest.startswith("///"):
                raise ValueError(
                    f"invalid SQLite URL {text!r}: use sqlite:///absolute/path.db "
                    "or sqlite:relative/path.db"
                )
            rest = rest[2:]
        if "?" in rest or "#" in rest:
            raise ValueError(f"invalid SQLite URL {text!r}: query strings are not supported")
        text = unquote(rest)
    elif "://" in text:
        scheme = text.split("://", 1)[0]
        raise ValueError(
            f"unsupported prediction-log URL scheme {scheme!r}: "
            "use postgresql://..., sqlite:///path.db or a file path"
        )
    if not text.strip():
        raise ValueError("empty prediction-log location: give a file path or a database URL")
    path = Path(text)
    if path.is_dir():
        raise ValueError(f"prediction-log path {str(path)!r} is a folder, not a database file")
    return path


def redacted(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: for logs and reports."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def open_store(url: str | os.PathLike[str]) -> Store:
    """Open (creating its tables, and for SQLite its folders, if needed) the store at ``url``.

    ``postgresql://...`` / ``postgres://...`` open a PostgresStore (psycopg 3 is imported only
    then); ``sqlite:///abs/path.db``, ``sqlite:relative.db`` or a plain path a SQLiteStore.
    An invalid URL raises ValueError with a one-line message.
    """
    text = os.fspath(url)
    if text.startswith(POSTGRES_SCHEMES):
        from predictionlog.postgres import PostgresStore

        return PostgresStore(text)
    return SQLiteStore(sqlite_path(text))
