"""The prediction log and feedback store, shared by the service and the retraining pipeline.

The service logs each prediction (sampled; one instance's inputs, outputs, model version)
through a :class:`PredictionLog`, which writes on a background thread, and records ground
truth with :meth:`Store.record_feedback`. The retraining pipeline reads the labelled
predictions back with :meth:`Store.labelled`. :func:`open_store` picks the backend by URL:
an embedded SQLite file (the default) or PostgreSQL.

Nothing here imports torch, fastapi, the service or training; psycopg only when a
PostgreSQL store is opened.

Exceptions (both plain ``Exception`` subclasses)::

    FeedbackConflict   feedback with a different label is already stored for that id
    UnknownPrediction  no prediction with that id has been logged
"""

from predictionlog.postgres import PostgresStore
from predictionlog.records import Feedback, FeedbackConflict, Prediction, UnknownPrediction
from predictionlog.sqlite import SQLiteStore
from predictionlog.store import Store, open_store
from predictionlog.writer import PredictionLog

__all__ = [
    "Feedback",
    "FeedbackConflict",
    "PostgresStore",
    "Prediction",
    "PredictionLog",
    "SQLiteStore",
    "Store",
    "UnknownPrediction",
    "open_store",
]
