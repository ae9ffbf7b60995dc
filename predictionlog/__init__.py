"""The prediction log and feedback store, shared by the service and the retraining pipeline.

The service hands each batch of predictions to a :class:`PredictionLog` (one ``send`` on the
request path), which the log writer process (:class:`WriterProcess`, ``python -m
predictionlog``) commits to the store, one transaction per short window, while it keeps the
log within its :class:`Retention` bounds and tracks input drift. Feedback is recorded with
:meth:`Store.record_feedback`; the retraining pipeline reads labelled predictions back with
:meth:`Store.labelled`. :func:`open_store` picks the backend by URL: an embedded SQLite file
(the default) or PostgreSQL.

Nothing here imports torch, fastapi, the service or training; psycopg only when a
PostgreSQL store is opened.

Exceptions (both plain ``Exception`` subclasses)::

    FeedbackConflict   feedback with a different label is already stored for that id
    UnknownPrediction  no prediction with that id has been logged
"""

from predictionlog.client import PredictionLog
from predictionlog.postgres import PostgresStore
from predictionlog.process import WriterProcess
from predictionlog.records import Feedback, FeedbackConflict, Prediction, UnknownPrediction
from predictionlog.retention import Retention, Usage
from predictionlog.sqlite import SQLiteStore
from predictionlog.store import Store, open_store, redacted
from predictionlog.wire import Batch

__all__ = [
    "Batch",
    "Feedback",
    "FeedbackConflict",
    "PostgresStore",
    "Prediction",
    "PredictionLog",
    "Retention",
    "SQLiteStore",
    "Store",
    "UnknownPrediction",
    "Usage",
    "WriterProcess",
    "open_store",
    "redacted",
]
