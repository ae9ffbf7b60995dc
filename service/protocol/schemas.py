"""Wire schemas of the small (non-tensor) bodies, for the OpenAPI document.

The tensor-carrying bodies (v1 predict, v2 infer, feedback) are decoded by the codecs
straight into numpy (pydantic over large float arrays costs more than the model); their
schemas are derived from each model's card in ``service.protocol.openapi``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    error: str = Field(examples=["input 'images': expected shape [N, 28, 28], got [1, 28, 27]"])


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
    parameters: dict[str, Any] = {}


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Ready(BaseModel):
    name: str
    ready: bool


class V1FeedbackResponse(BaseModel):
    recorded: int
    duplicates: int


class V1ModelList(BaseModel):
    models: list[str]
