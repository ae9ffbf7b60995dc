"""A model file replaced while its version is being loaded: between the sha256 check and
onnxruntime reading the file again, another graph (same inputs and outputs, other weights)
takes its place. It must be refused, not served under a card whose sha256 it does not have.

Found by tests/endurance/test_corrupt_model.py's review of the load path ("mid-load")."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from modelrepo import MODEL_FILE
from service.errors import LoadError
from service.runtime import model as model_module
from service.runtime.model import ServedModel
from tests.support.paths import MODELS

NAME = "breast-cancer-ann"


def other_weights(path: Path) -> bytes:
    graph = onnx.load(str(path))
    first = graph.graph.initializer[0]
    changed = numpy_helper.to_array(first) + np.float32(0.5)
    first.CopyFrom(numpy_helper.from_array(changed.astype(np.float32), first.name))
    return graph.SerializeToString()


def test_a_file_replaced_after_its_sha256_check_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / NAME / "1"
    shutil.copytree(MODELS / NAME / "1", folder)
    replacement = other_weights(folder / MODEL_FILE)
    real = model_module.ort.InferenceSession

    def replaced_first(path: Any, *args: Any, **kwargs: Any) -> Any:
        (folder / MODEL_FILE).write_bytes(replacement)  # the push lands mid-load
        return real(path, *args, **kwargs)

    monkeypatch.setattr(model_module.ort, "InferenceSession", replaced_first)
    # no self-check: the replay would catch these weights; nothing else would
    with pytest.raises(LoadError) as refused:
        ServedModel.load(folder, threads=1, self_check=False)
    assert refused.value.reason == "sha256_mismatch", refused.value
    assert "changed while" in str(refused.value)

    monkeypatch.setattr(model_module.ort, "InferenceSession", real)
    shutil.copy(MODELS / NAME / "1" / MODEL_FILE, folder / MODEL_FILE)
    assert ServedModel.load(folder, threads=1, self_check=False).card.version == 1
