"""Service settings, from ``NNSERVE_*`` environment variables; the defaults run out of the box."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NNSERVE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    model_repository: Path = Path("models")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    #: Largest request body accepted; larger ones get 413 before they are read.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    #: Bearer token of the management API (repository extension); unset = API off (403).
    admin_token: SecretStr | None = None
    #: onnxruntime intra-op threads per session (1 suits many small requests best).
    session_threads: int = Field(default=1, ge=1)
    #: Compare reference outputs from model.json at load time (the self-check).
    self_check: bool = True
