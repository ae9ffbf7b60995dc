"""A user's own PyTorch model: ``training.publish`` at the end of their script, and a recipe of
their own in one file trained by ``python -m training --recipe-file``; both then served."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from torch import nn

from modelrepo import read_card, scan
from service.runtime.model import ServedModel
from tests.support.paths import ROOT
from tests.support.server import running_server
from training import publish
from training.errors import ParityError, TrainingError


def iris_net() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """What a user's script has at its end: a trained module and some real inputs."""
    torch.manual_seed(0)
    x, y = load_iris(return_X_y=True)
    x, y = x.astype(np.float32), y.astype(np.int64)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        optimizer.step()
    return net, x, y


def test_publish_from_a_pytorch_script_and_serve(tmp_path: Path) -> None:
    net, x, _ = iris_net()
    (tmp_path / "models").mkdir()
    version, folder = publish(
        net,
        x,
        name="iris-mlp",
        labels=["setosa", "versicolor", "virginica"],
        repository=tmp_path / "models",
        description="my own iris classifier",
        input_name="measurements",
    )
    assert version == 1
    card = read_card(folder)
    assert card.provenance.origin == "published" and card.kind == "custom"
    assert card.parity is not None and card.parity.max_abs_diff <= 1e-4
    assert card.parity.n_samples == 150
    assert [o.name for o in card.outputs] == ["logits", "probabilities"]
    assert card.inputs[0].shape == [-1, 4]  # the batch axis is dynamic
    ServedModel.load(folder)  # the service's self-check passes
    # the explanations' baseline: the mean of the inputs it was published with
    assert card.explain_baseline is not None and card.explain_baseline.shape == [4]
    np.testing.assert_allclose(card.explain_baseline.data, x.mean(axis=0), rtol=1e-5)
    with running_server(tmp_path / "models", tmp_path, NNSERVE_WORKERS="1") as server:
        answer = httpx.post(
            f"{server.url}/v1/models/iris-mlp:predict", json={"instances": x[::50].tolist()}
        ).json()
        explained = httpx.post(
            f"{server.url}/v1/models/iris-mlp:explain", json={"instances": x[:1].tolist()}
        ).json()
    assert [p["label"] for p in answer["predictions"]] == ["setosa", "versicolor", "virginica"]
    assert explained["baseline"]["origin"] == "card"
    assert len(explained["explanations"][0]["attributions"]) == 4


def test_publish_a_regression_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    x = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)
    (tmp_path / "models").mkdir()
    _, folder = publish(net, x, name="reg", task="regression", repository=tmp_path / "models")
    card = read_card(folder)
    assert card.task == "regression" and [o.name for o in card.outputs] == ["predictions"]
    ServedModel.load(folder)


class Noisy(nn.Module):
    """A module whose exported graph cannot match PyTorch (random noise in forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x + torch.rand_like(x))


@pytest.mark.parametrize("case", ["parity", "labels"])
def test_publish_refuses_and_writes_nothing(tmp_path: Path, case: str) -> None:
    (tmp_path / "models").mkdir()
    x = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    if case == "parity":
        with pytest.raises(ParityError, match="differs from PyTorch"):
            publish(Noisy(), x, name="noisy", labels=["a", "b", "c"],
                    repository=tmp_path / "models")  # fmt: skip
    else:
        with pytest.raises(TrainingError, match="2 labels"):
            publish(nn.Linear(4, 3), x, name="m", labels=["a", "b"],
                    repository=tmp_path / "models")  # fmt: skip
    assert list((tmp_path / "models").iterdir()) == []


def test_a_recipe_in_one_file_trains_and_serves(tmp_path: Path) -> None:
    recipe = tmp_path / "my_recipe.py"
    text = (ROOT / "examples" / "wine_recipe.py").read_text()
    recipe.write_text(text.replace('name="wine-mlp"', 'name="my-wine"'))
    (tmp_path / "models").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "training", "--recipe-file", str(recipe), "my-wine", "--quick",
         "--repository", str(tmp_path / "models")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert scan(tmp_path / "models") == {"my-wine": [1]}
    card = read_card(tmp_path / "models" / "my-wine" / "1")
    assert card.provenance.origin == "trained" and card.provenance.dataset is not None
    assert card.labels == ["class_0", "class_1", "class_2"] and len(card.feature_names) == 13
    x = load_wine_rows()
    with running_server(tmp_path / "models", tmp_path, NNSERVE_WORKERS="1") as server:
        r = httpx.post(f"{server.url}/v1/models/my-wine:predict", json={"instances": x})
        assert r.status_code == 200 and len(r.json()["predictions"]) == len(x)


def load_wine_rows() -> list[list[float]]:
    from sklearn.datasets import load_wine

    return load_wine().data[:5].tolist()  # type: ignore[no-any-return]


def test_a_bad_recipe_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("X = 1\n")
    for path in (bad, tmp_path / "missing.py"):
        done = subprocess.run(
            [sys.executable, "-m", "training", "--recipe-file", str(path), "x", "--quick"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2 and done.stderr.startswith("error: recipe file")
        assert done.stderr.count("\n") == 1, done.stderr
    shutil.rmtree(tmp_path / "models", ignore_errors=True)
