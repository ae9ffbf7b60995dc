"""``python -m modelrepo import``: a user's ONNX file becomes a version with a full card, or
a one-line error (exit 2) and nothing in the repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelrepo import file_sha256, read_card, scan
from modelrepo.__main__ import main
from service.runtime.model import ServedModel
from tests.support.onnx_helpers import tiny_classifier


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    return tmp_path / "models"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["import", *args])
    captured = capsys.readouterr()
    return code, captured.err


def test_import_without_samples_writes_a_card_the_service_checks(
    tmp_path: Path, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "mine.onnx"
    tiny_classifier(source)
    code, err = run(capsys, str(source), "--name", "mine", "--labels", "a,b,c", "--repository",
                    str(repo))  # fmt: skip
    assert code == 0, err
    card = read_card(repo / "mine" / "1")
    assert card.provenance.origin == "imported" and card.kind == "custom"
    assert card.provenance.source_sha256 == file_sha256(source) == card.onnx_sha256
    assert "--name mine" in card.provenance.command and card.provenance.opset == 17
    assert [i.shape for i in card.inputs] == [[-1, 4]] and card.labels == ["a", "b", "c"]
    assert card.metrics is None and card.parity is None
    (case,) = card.reference
    assert case.inputs[0].shape == [4, 4]  # generated from the declared shape
    model = ServedModel.load(repo / "mine" / "1")  # the real load-time self-check passes
    assert model.probabilities_index == 0
    code, err = run(capsys, str(source), "--name", "mine", "--labels", "a,b,c", "--repository",
                    str(repo))  # fmt: skip
    assert code == 0 and scan(repo) == {"mine": [1, 2]}  # the next version


def test_import_with_samples_records_them_as_the_reference(
    tmp_path: Path, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, samples = tmp_path / "mine.onnx", tmp_path / "x.npy"
    weights = tiny_classifier(source)
    x = np.arange(20, dtype=np.float64).reshape(5, 4) / 10
    np.save(samples, x)
    code, err = run(capsys, str(source), "--name", "mine", "--labels", "a,b,c", "--samples",
                    str(samples), "--repository", str(repo))  # fmt: skip
    assert code == 0, err
    (case,) = read_card(repo / "mine" / "1").reference
    np.testing.assert_allclose(np.reshape(case.inputs[0].data, (5, 4)), x, rtol=1e-6)
    logits = x.astype(np.float32) @ weights  # without the bias: only the argmax order matters
    assert case.outputs[0].shape == [5, 3] and logits.shape == (5, 3)
    ServedModel.load(repo / "mine" / "1")


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    good, no_batch, new_opset = tmp_path / "g.onnx", tmp_path / "nb.onnx", tmp_path / "op.onnx"
    tiny_classifier(good)
    tiny_classifier(no_batch, batch=1)
    tiny_classifier(new_opset, opset=99)
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx file at all")
    np.save(tmp_path / "wrong.npy", np.zeros((3, 5)))
    labels = ["--labels", "a,b,c"]
    return {
        "not ONNX": ([str(tmp_path / "junk.onnx"), "--name", "m", *labels], "not a valid ONNX"),
        "unsupported opset": ([str(new_opset), "--name", "m", *labels], "opset"),
        "no batch axis": ([str(no_batch), "--name", "m", *labels], "no batch axis"),
        "labels do not match": ([str(good), "--name", "m", "--labels", "a,b"], "2 labels"),
        "no labels": ([str(good), "--name", "m"], "needs its labels"),
        "name outside the rule": ([str(good), "--name", "Bad_Name", *labels], "invalid model name"),
        "samples of the wrong shape": (
            [str(good), "--name", "m", *labels, "--samples", str(tmp_path / "wrong.npy")],
            "samples have shape [3, 5]",
        ),
        "missing file": ([str(tmp_path / "nope.onnx"), "--name", "m", *labels], "cannot read"),
    }


@pytest.mark.parametrize(
    "case",
    ["not ONNX", "unsupported opset", "no batch axis", "labels do not match", "no labels",
     "name outside the rule", "samples of the wrong shape", "missing file"],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    tmp_path: Path, repo: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    args, expected = _bad_inputs(tmp_path)[case]
    code, err = run(capsys, *args, "--repository", str(repo))
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert list(repo.iterdir()) == []  # nothing appears in the repository
