"""The model repository contract shared by training (writer) and serving (reader).

``models/<name>/<version>/model.onnx`` + ``model.json``; ``model.json`` is defined by
:class:`ModelCard`, the one schema both sides use. Nothing here imports torch; ``graph``
(a graph's inputs and outputs, read with onnxruntime) and ``importer`` (``python -m modelrepo
import``, which also needs onnx) are imported only by what uses them.
"""

from modelrepo.card import (
    ClassMetrics,
    DatasetInfo,
    ExplainBaseline,
    FeatureBaseline,
    Forecast,
    ForecastErrors,
    ModelCard,
    Parity,
    Provenance,
    Quantization,
    ReferenceCase,
    Speed,
    StepErrors,
    Tensor,
    TensorSpec,
    TestMetrics,
    is_valid_name,
)
from modelrepo.layout import (
    CARD_FILE,
    MODEL_FILE,
    PublishError,
    RepositoryError,
    file_sha256,
    is_valid_version,
    publish,
    read_card,
    scan,
    version_dir,
)

__all__ = [
    "CARD_FILE",
    "MODEL_FILE",
    "ClassMetrics",
    "DatasetInfo",
    "ExplainBaseline",
    "FeatureBaseline",
    "Forecast",
    "ForecastErrors",
    "ModelCard",
    "Parity",
    "Provenance",
    "PublishError",
    "Quantization",
    "ReferenceCase",
    "RepositoryError",
    "Speed",
    "StepErrors",
    "Tensor",
    "TensorSpec",
    "TestMetrics",
    "file_sha256",
    "is_valid_name",
    "is_valid_version",
    "publish",
    "read_card",
    "scan",
    "version_dir",
]
