"""``python -m service``: serve the model repository with uvicorn (settings: NNSERVE_*)."""

from __future__ import annotations

import signal

import uvicorn

from service.app import create_app
from service.observability.logs import configure
from service.settings import Settings


def main() -> None:
    settings = Settings()
    configure(settings.log_level, settings.log_format)
    # uvicorn handles SIGTERM (stop accepting, finish in-flight requests, run the lifespan's
    # shutdown) and then re-raises it to the previous handler: make that a clean exit 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        proxy_headers=False,  # nothing here reads client addresses; skip that middleware
        server_header=False,  # two headers fewer to build on every response
        date_header=False,
        timeout_graceful_shutdown=int(settings.drain_timeout) or None,
    )


if __name__ == "__main__":
    main()
