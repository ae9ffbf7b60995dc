"""Domain errors: what went wrong, in the engine's words. No transport knows them here; each
edge maps this tree to its own codes in one table (``service.http.errors`` for HTTP).

    NNServeError
     ├── InvalidInput        the request is malformed or does not fit the model
     ├── Unauthorized        a missing or wrong API key or management token
     ├── Forbidden           the management API is off (no token configured)
     ├── ModelNotFound       unknown model or version
     ├── UnknownPrediction   feedback for a prediction id that was never logged
     ├── Conflict            feedback that contradicts feedback already recorded
     ├── RequestTooLarge     a body over NNSERVE_MAX_BODY_BYTES, an explanation over its cap
     ├── ModelNotReady       known, but not loaded (yet, or failed its checks)
     ├── Overloaded          queue full; ``retry_after_s`` says when to try again
     └── DeadlineExceeded    waited past its deadline

Anything else is a bug: logged with the request id, answered as a generic internal error.
``LoadError`` is not a request error: it is why a model version was refused at load time.
"""

from __future__ import annotations


class NNServeError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(NNServeError):
    pass


class Unauthorized(NNServeError):
    pass


class Forbidden(NNServeError):
    pass


class ModelNotFound(NNServeError):
    pass


class UnknownPrediction(ModelNotFound):
    pass


class Conflict(NNServeError):
    pass


class RequestTooLarge(NNServeError):
    pass


class ModelNotReady(NNServeError):
    pass


class Overloaded(NNServeError):
    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(NNServeError):
    pass


class LoadError(Exception):
    """A model version failed a load check; ``reason`` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
