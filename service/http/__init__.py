"""The HTTP edge: ASGI fast path, FastAPI routes and OpenAPI, request observation, and the
one table mapping domain errors to HTTP statuses. Nothing below this package knows HTTP."""
