"""Wire schemas, for the OpenAPI docs and the small (non-tensor) responses.

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


DOCUMENTED: list[type[BaseModel]] = [
    ErrorBody,
    V2InferRequest,
    V2InferResponse,
    V1PredictRequest,
    V1PredictResponse,
    V1Feedback,
]


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _header(name: str, description: str, kind: str = "string") -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": kind},
    }


def _operation(
    tag: str,
    summary: str,
    request: type[BaseModel],
    response: type[BaseModel],
    path_params: list[str],
    binary: bool,
) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _ref(request)}}
    if binary:
        content["application/octet-stream"] = {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "binary tensor data extension: the JSON header (its length in "
                "Inference-Header-Content-Length) followed by the raw tensors",
            }
        }
    errors = {
        "400": "bad input: which field, expected vs got",
        "404": "unknown model/version",
        "413": "body over NNSERVE_MAX_BODY_BYTES",
        "503": "not ready, or queue full (Retry-After)",
        "504": "deadline passed",
    }
    parameters = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
        for p in path_params
    ]
    parameters += [
        _header("X-Request-Id", "your id for this request (echoed back)"),
        _header("X-Request-Timeout-Ms", "deadline in milliseconds", "number"),
    ]
    if binary:
        parameters.append(
            _header(
                "Inference-Header-Content-Length",
                "length of the JSON header when binary tensors follow",
                "integer",
            )
        )
    return {
        "tags": [tag],
        "summary": summary,
        "parameters": parameters,
        "requestBody": {"required": True, "content": content},
        "responses": {
            "200": {
                "description": "predictions",
                "content": {"application/json": {"schema": _ref(response)}},
            },
            **{
                code: {
                    "description": text,
                    "content": {"application/json": {"schema": _ref(ErrorBody)}},
                }
                for code, text in errors.items()
            },
        },
    }


def hot_paths() -> dict[str, Any]:
    """OpenAPI path items of the routes answered by ``service.fastpath`` (not FastAPI)."""
    v2 = "Open Inference Protocol (v2)"
    return {
        "/v1/models/{model_name}:predict": {
            "post": _operation(
                "Friendly JSON (v1)",
                "Predict",
                V1PredictRequest,
                V1PredictResponse,
                ["model_name"],
                binary=False,
            )
        },
        "/v2/models/{model_name}/infer": {
            "post": _operation(
                v2, "Inference", V2InferRequest, V2InferResponse, ["model_name"], binary=True
            )
        },
        "/v2/models/{model_name}/versions/{model_version}/infer": {
            "post": _operation(
                v2,
                "Inference on one version",
                V2InferRequest,
                V2InferResponse,
                ["model_name", "model_version"],
                binary=True,
            )
        },
    }
