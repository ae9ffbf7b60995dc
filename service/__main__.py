"""``python -m service``: serve the model repository with uvicorn (settings: NNSERVE_*)."""

from __future__ import annotations

import uvicorn

from service.app import create_app
from service.logs import configure
from service.settings import Settings


def main() -> None:
    settings = Settings()
    configure(settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
