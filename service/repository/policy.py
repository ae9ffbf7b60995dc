"""Per-model serving settings: which versions to serve and how to batch them.

Defaults come from the service settings; a model may override them with an optional
``models/<name>/serving.json`` beside its versions, e.g.
``{"version_policy": "latest:2", "max_batch_size": 16, "max_batch_delay_ms": 2}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.runtime.batcher import BatchConfig

SERVING_FILE = "serving.json"
_POLICY = re.compile(r"latest:[1-9][0-9]*|all|specific:[1-9][0-9]*(,[1-9][0-9]*)*")


def check_policy(text: str) -> str:
    if not _POLICY.fullmatch(text):
        raise ValueError(
            f"version policy must be 'latest:N', 'all' or 'specific:V1,V2,...', got {text!r}"
        )
    return text


@dataclass(frozen=True)
class VersionPolicy:
    text: str

    def choose(self, versions: list[int]) -> tuple[list[int], int | None]:
        """(candidates newest first, how many to serve or None for every candidate)."""
        kind, _, arg = self.text.partition(":")
        newest_first = sorted(versions, reverse=True)
        if kind == "latest":
            return newest_first, int(arg)
        if kind == "specific":
            wanted = {int(v) for v in arg.split(",")}
            return [v for v in newest_first if v in wanted], None
        return newest_first, None


class ServingFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version_policy: str | None = None
    max_batch_size: int | None = Field(default=None, ge=1)
    max_batch_delay_ms: float | None = Field(default=None, ge=0)
    max_queue_size: int | None = Field(default=None, ge=1)

    @field_validator("version_policy")
    @classmethod
    def _policy(cls, value: str | None) -> str | None:
        return None if value is None else check_policy(value)


@dataclass(frozen=True)
class ModelPolicy:
    versions: VersionPolicy
    batching: BatchConfig


def read_policy(model_folder: Path, default: ModelPolicy) -> ModelPolicy:
    """The model's policy: ``serving.json`` over the defaults (raises ``ValueError``)."""
    path = model_folder / SERVING_FILE
    if not path.is_file():
        return default
    try:
        override = ServingFile.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    batching = default.batching
    return ModelPolicy(
        versions=VersionPolicy(override.version_policy)
        if override.version_policy
        else default.versions,
        batching=BatchConfig(
            max_batch_size=override.max_batch_size or batching.max_batch_size,
            max_batch_delay_s=(
                batching.max_batch_delay_s
                if override.max_batch_delay_ms is None
                else override.max_batch_delay_ms / 1000
            ),
            max_queue_size=override.max_queue_size or batching.max_queue_size,
        ),
    )
