"""``model.json``: the metadata that travels with every published ``model.onnx``.

One pydantic model, written by training and read by the service. Field names are the
contract (DESIGN §2); add fields with defaults, never rename or repurpose one.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"

#: Open Inference Protocol datatypes (the numeric ones a model input may declare).
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64",
]  # fmt: skip


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Frozen):
    """One named graph input or output. ``-1`` marks a dynamic axis (batch, sequence length)."""

    name: str
    datatype: Datatype
    shape: list[Annotated[int, Field(ge=-1)]]
    description: str = ""
    #: Accepted value range of every element, where the model knows one (e.g. pixels 0-255).
    min_value: float | None = None
    max_value: float | None = None


class Tensor(_Frozen):
    """A concrete tensor in Open-Inference-Protocol form: flat row-major data plus a shape."""

    name: str
    datatype: Datatype
    shape: list[Annotated[int, Field(ge=0)]]
    data: list[float]

    @model_validator(mode="after")
    def _size_matches_shape(self) -> Tensor:
        size = 1
        for dim in self.shape:
            size *= dim
        if size != len(self.data):
            raise ValueError(
                f"tensor {self.name!r}: shape {self.shape} needs {size} values, "
                f"got {len(self.data)}"
            )
        return self


class ReferenceCase(_Frozen):
    """Inputs and the outputs they must produce; the service replays these at load time."""

    inputs: list[Tensor]
    outputs: list[Tensor]


class ClassMetrics(_Frozen):
    label: str
    precision: float
    recall: float
    f1: float
    support: int


class TestMetrics(_Frozen):
    """Figures on the official test split, computed once after training."""

    __test__ = False  # not a pytest class

    accuracy: float = Field(ge=0, le=1)
    loss: float = Field(ge=0)
    n: int = Field(gt=0)
    per_class: list[ClassMetrics]
    confusion_matrix: list[list[int]]


class DatasetInfo(_Frozen):
    name: str
    source: str
    #: sha256 over the raw arrays of every split, so a changed dataset is noticed.
    fingerprint: str = Field(pattern=SHA256_PATTERN)
    n_train: int
    n_val: int
    n_test: int
    split: str


class Provenance(_Frozen):
    """Where a version comes from. ``origin``: ``trained`` by a recipe of ``python -m
    training``, ``published`` from a user's own PyTorch script (``training.publish``),
    ``quantized`` from another version (``python -m training quantize``), ``imported``
    from an ONNX file (``python -m modelrepo import``), or ``derived`` by the service from a
    bare ``model.onnx`` (never written to disk). Training figures are absent (None / 0) where
    there was no training run here."""

    origin: Literal["trained", "published", "imported", "derived", "quantized"] = "trained"
    dataset: DatasetInfo | None = None
    hyperparameters: dict[str, float | int | str | bool | None] = {}
    seed: int | None = None
    epochs_run: int = 0
    best_epoch: int = 0
    wall_time_s: float = 0.0
    torch_version: str = ""
    onnx_version: str = ""
    onnxruntime_version: str = ""
    opset: int = 0
    created_at: str = ""
    trained_on: str = ""
    #: sha256 of the file a version was imported from, and the command that imported it.
    source_sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    command: str = ""


class Parity(_Frozen):
    """max |onnxruntime - PyTorch| over ``n_samples`` test samples, every output."""

    max_abs_diff: float = Field(ge=0)
    n_samples: int = Field(gt=0)
    tolerance: float = Field(gt=0)


class Speed(_Frozen):
    """Raw onnxruntime throughput of one graph (no service), one intra-op thread."""

    model: str  # which graph: the source or this version
    batch: int = Field(gt=0)
    samples_per_s: float = Field(gt=0)


class Quantization(_Frozen):
    """How a quantized version was made from its source version, and what it costs: test
    accuracy of both on the same split, the gate, parity with the source, speed of both."""

    source: str  # <name>/<version>
    source_sha256: str = Field(pattern=SHA256_PATTERN)
    method: str  # e.g. static QDQ, int8 weights per channel, uint8 activations
    calibration_samples: int = Field(gt=0)
    calibration_split: str
    #: float nodes left unquantized, and why (measured: int8 would be slower there)
    excluded_nodes: list[str] = []
    source_accuracy: float = Field(ge=0, le=1)
    accuracy: float = Field(ge=0, le=1)
    #: published only if source_accuracy - accuracy <= max_accuracy_drop
    max_accuracy_drop: float
    #: max |quantized - source| of the probabilities, and the share of equal top-1 classes,
    #: over the ``parity_samples`` test samples
    max_abs_diff: float = Field(ge=0)
    top1_agreement: float = Field(ge=0, le=1)
    parity_samples: int = Field(gt=0)
    speed: list[Speed] = []
    measured_on: str = ""


class FeatureBaseline(_Frozen):
    """Training-split histogram of one input feature, the reference for drift (PSI)."""

    name: str
    bin_edges: list[float]
    fractions: list[float]


class ExplainBaseline(_Frozen):
    """What an explanation puts in place of a removed feature, patch or time step: a typical
    input computed from the training split at publish time (``description`` says how).
    ``shape`` is one instance's shape, or ``[channels]`` for a sequence (every time step)."""

    description: str
    shape: list[Annotated[int, Field(gt=0)]]
    data: list[float]

    @model_validator(mode="after")
    def _size_matches_shape(self) -> ExplainBaseline:
        size = 1
        for dim in self.shape:
            size *= dim
        if size != len(self.data):
            raise ValueError(f"explain baseline: shape {self.shape} needs {size} values")
        return self


class StepErrors(_Frozen):
    """Forecast errors at one horizon step (1 = the next value) over the evaluation origins.
    MASE: MAE divided by the in-sample MAE of the seasonal naive forecast (the scale)."""

    step: int = Field(gt=0)
    mae: float = Field(ge=0)
    rmse: float = Field(ge=0)
    mase: float = Field(ge=0)


class ForecastErrors(_Frozen):
    """One forecaster's test errors, over every step and per step: the model's, or a
    baseline's on the same origins (``method``: ``model``, ``seasonal-naive``, ...)."""

    method: str
    description: str = ""
    mae: float = Field(ge=0)
    rmse: float = Field(ge=0)
    mase: float = Field(ge=0)
    per_step: list[StepErrors] = Field(min_length=1)


class Forecast(_Frozen):
    """A forecaster's output meaning and figures: the input is a ``window`` of past values,
    the output the next ``horizon`` values, both in ``units``, one value per ``step``.
    ``errors``: the model's test errors first, then the baselines' on the same origins."""

    window: int = Field(gt=0)
    horizon: int = Field(gt=0)
    units: str
    step: str
    season: int = Field(gt=0)
    #: The graph output holding the forecast ``[batch, horizon]``.
    output: str = "predictions"
    evaluation: str
    origins: int = Field(gt=0)
    #: In-sample MAE of the seasonal naive forecast on the training part: MASE's divisor.
    mase_scale: float = Field(gt=0)
    errors: list[ForecastErrors] = Field(min_length=1)

    def model_errors(self) -> ForecastErrors:
        return self.errors[0]


class ModelCard(_Frozen):
    """The whole of ``model.json``."""

    schema_version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(gt=0)
    #: The network's family; ``custom`` for a user's own (published or imported) graph.
    kind: Literal["ann", "cnn", "lstm", "gru", "custom"]
    task: Literal["classification", "regression"]
    description: str = ""
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    labels: list[str] = []
    feature_names: list[str] = []
    #: Test figures (None when none were measured here, e.g. an imported graph).
    metrics: TestMetrics | None = None
    provenance: Provenance
    onnx_sha256: str = Field(pattern=SHA256_PATTERN)
    #: onnxruntime against PyTorch (None without a PyTorch original, e.g. imported).
    parity: Parity | None = None
    #: The load-time self-check; empty only for a card derived from a bare graph.
    reference: list[ReferenceCase] = []
    #: Absolute tolerance for the service's load-time replay of ``reference``.
    reference_atol: float = Field(default=1e-4, gt=0)
    baseline: list[FeatureBaseline] = []
    #: The explanations' baseline (``service.runtime.explain``); None on cards written before
    #: it existed, whose explainer derives one from ``baseline`` or ``reference``.
    explain_baseline: ExplainBaseline | None = None
    #: A quantized version's making and figures (None for any other version).
    quantization: Quantization | None = None
    #: A forecaster's window, horizon, units and test errors beside its baselines' (None for
    #: any other model); the service answers with forecasts and tracks their live error.
    forecast: Forecast | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.task == "classification" and not self.labels:
            raise ValueError("a classification model needs its class labels")
        if not self.reference and self.provenance.origin != "derived":
            raise ValueError("a model needs at least one reference case (its self-check)")
        if self.forecast is not None:
            self._check_forecast(self.forecast)
        if self.feature_names and len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError("feature names must be unique")
        declared = {t.name for t in self.inputs} | {t.name for t in self.outputs}
        for case in self.reference:
            for tensor in (*case.inputs, *case.outputs):
                if tensor.name not in declared:
                    raise ValueError(
                        f"reference tensor {tensor.name!r} is not a declared input or output"
                    )
        return self

    def _check_forecast(self, forecast: Forecast) -> None:
        if self.task != "regression":
            raise ValueError("a forecast is a regression model's (task: regression)")
        if self.inputs[0].shape != [-1, forecast.window]:
            raise ValueError(f"a forecaster's input must be [-1, {forecast.window}] (the window)")
        outputs = {t.name: t.shape for t in self.outputs}
        if outputs.get(forecast.output, [])[1:] != [forecast.horizon]:
            raise ValueError(
                f"forecast output {forecast.output!r} must be [-1, {forecast.horizon}]"
            )

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def to_json(self) -> str:
        return self.model_dump_json(indent=1) + "\n"


def is_valid_name(name: str) -> bool:
    return re.fullmatch(NAME_PATTERN, name) is not None
