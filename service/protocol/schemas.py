"""Wire schemas, for the OpenAPI document and the small (non-tensor) responses.

Tensor-carrying request bodies are decoded by the codecs straight into numpy (pydantic over
large float arrays costs more than the model), but they are documented here in full.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, RootModel


class ErrorBody(BaseModel):
    error: str = Field(examples=["input 'images': expected shape [N, 28, 28], got [1, 28, 27]"])


class V2Tensor(BaseModel):
    name: str = Field(examples=["features"])
    shape: list[int] = Field(examples=[[1, 30]])
    datatype: str = Field(examples=["FP32"], description="FP32, FP64, FP16, INT8..64, UINT8..64")
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="binary_data_size: byte length of this tensor after the "
        "JSON header (binary tensor data extension)",
    )
    data: list[Any] | None = Field(default=None, description="row-major values, flat or nested")


class V2RequestedOutput(BaseModel):
    name: str = Field(examples=["probabilities"])
    parameters: dict[str, Any] | None = Field(default=None, examples=[{"binary_data": True}])


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_output: true returns every output as binary"
    )
    inputs: list[V2Tensor]
    outputs: list[V2RequestedOutput] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[V2Tensor]


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


class V1PredictRequest(BaseModel):
    instances: list[Any] = Field(
        description="raw inputs in the model's natural shape: a row of 30 numbers or an "
        "object keyed by feature name (breast-cancer-ann); a 28x28 array of "
        "pixel values 0-255 (fashion-cnn); a list of time steps of 12 values, "
        "any length (vowels-lstm)",
        examples=[[[[0.0] * 28] * 28]],
    )


class V1Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]


class V1PredictResponse(BaseModel):
    predictions: list[V1Prediction]
    model_name: str
    model_version: str
    id: str


class V1FeedbackItem(BaseModel):
    id: str = Field(description="a prediction's id (X-Request-Id, or predictions[i].id)")
    label: str = Field(description="the true class label")


class V1Feedback(RootModel[V1FeedbackItem | list[V1FeedbackItem]]):
    """One item, or a list of them."""


class V1FeedbackResponse(BaseModel):
    recorded: int
    duplicates: int


class V1ModelList(BaseModel):
    models: list[str]
