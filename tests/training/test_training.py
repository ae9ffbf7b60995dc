"""`python -m training`: real data, real export, real onnxruntime, into a temporary repository."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelrepo import MODEL_FILE, file_sha256, read_card, scan
from tests.support.onnx_helpers import reference_max_error, session
from tests.support.paths import ROOT


def train(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@pytest.mark.slow
@pytest.mark.parametrize("name", ["breast-cancer-ann", "fashion-cnn", "vowels-lstm"])
def test_quick_train_export_parity_publish(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if name == "fashion-cnn":
        request.getfixturevalue("fashion_mnist")
    done = train(name, "--quick", "--repository", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert scan(tmp_path) == {name: [1]}
    folder = tmp_path / name / "1"
    card = read_card(folder)
    assert (card.name, card.version) == (name, 1)
    assert card.onnx_sha256 == file_sha256(folder / MODEL_FILE)
    assert card.parity.max_abs_diff <= 1e-4 and card.parity.n_samples >= 256
    assert card.provenance.epochs_run == 2 and card.provenance.seed == 0
    assert card.provenance.dataset.n_val > 0 and card.metrics.n > 0
    sess = session(folder / MODEL_FILE)
    assert reference_max_error(sess, card) <= card.reference_atol
    # the graph takes raw values with a dynamic batch (and time) axis
    spec = card.inputs[0]
    shapes = (
        [(1, 7, 12), (3, 29, 12)]
        if card.kind == "lstm"
        else [(1, *spec.shape[1:]), (5, *spec.shape[1:])]
    )
    for shape in shapes:
        raw = np.random.default_rng(0).uniform(0, 255, size=shape).astype(np.float32)
        _logits, probs = sess.run(["logits", "probabilities"], {spec.name: raw})
        assert probs.shape == (shape[0], len(card.labels))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    for picture in ("learning_curve.png", "confusion_matrix.png"):
        width, height = png_size(folder / picture)
        assert width > 200 and height > 200
    assert (folder / "run.json").is_file()
    assert f"published version 1 at {folder}" in done.stdout
    # what explanations occlude with: per feature, the mean image, per channel
    assert card.explain_baseline is not None
    assert card.explain_baseline.shape == ([12] if card.kind == "lstm" else spec.shape[1:])


@pytest.mark.slow
def test_a_rerun_with_the_same_seed_gives_the_same_figures(tmp_path: Path) -> None:
    for _ in range(2):
        assert train("breast-cancer-ann", "--quick", "--repository", str(tmp_path)).returncode == 0
    first, second = (read_card(tmp_path / "breast-cancer-ann" / v) for v in ("1", "2"))
    assert first.metrics == second.metrics
    assert first.reference == second.reference


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-model"], "invalid choice: 'no-such-model'"),
        (["breast-cancer-ann", "--epochs", "-1"], "epochs must be >= 1, got -1"),
        (["breast-cancer-ann", "--lr", "0"], "learning rate must be > 0, got 0.0"),
        (["breast-cancer-ann", "--lr", "-0.5"], "learning rate must be > 0, got -0.5"),
        (["breast-cancer-ann", "--dropout", "1.5"], "dropout must be in [0, 1), got 1.5"),
    ],
)
def test_bad_arguments_fail_with_one_clear_line(
    args: list[str], message: str, tmp_path: Path
) -> None:
    done = train(*args, "--repository", str(tmp_path))
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_repository_paths_fail_before_training(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    for repository, message in [
        (tmp_path / "missing", "does not exist"),
        (a_file, "is not a directory"),
        (Path("/proc"), "is not writable"),
    ]:
        done = train("breast-cancer-ann", "--quick", "--repository", str(repository))
        assert done.returncode == 2
        assert done.stderr.strip().count("\n") == 0, done.stderr
        assert done.stderr.startswith("error: model repository") and message in done.stderr
        assert "epoch" not in done.stdout


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    done = train(
        "fashion-cnn",
        "--quick",
        "--repository",
        str(tmp_path),
        env={"NNSERVE_FASHION_MNIST_DIR": str(tmp_path / "nowhere")},
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: {tmp_path / 'nowhere'} not found; install Debian's "
        "dataset-fashion-mnist package (apt-get install "
        "dataset-fashion-mnist)"
    )
    assert list(tmp_path.iterdir()) == []
