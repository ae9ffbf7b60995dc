"""modelrepo.single: one model's folder, as KServe leaves it under /mnt/models, served as a
one-model repository under the InferenceService's name (loaded by the real ServedModel)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from modelrepo import CARD_FILE, MODEL_FILE, RepositoryError, scan
from modelrepo.single import mirror
from service.runtime.model import ServedModel
from tests.support.paths import MODELS

ANN = MODELS / "breast-cancer-ann" / "1"


def _files(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy(ANN / name, folder / name)
    return folder


def test_one_versions_files_are_served_under_the_given_name_and_left_untouched(
    tmp_path: Path,
) -> None:
    source = _files(tmp_path / "mnt" / "models", MODEL_FILE, CARD_FILE, "run.json")
    before = {p.name: p.read_bytes() for p in source.iterdir()}

    root = mirror(source, "ann", tmp_path / "repo")

    assert scan(root) == {"ann": [1]}
    model = ServedModel.load(root / "ann" / "1")  # sha256 and self-check pass on the links
    assert (model.name, model.version) == ("ann", 1)
    assert (root / "ann" / "1" / MODEL_FILE).resolve() == (source / MODEL_FILE).resolve()
    assert (root / "ann" / "1" / "run.json").is_symlink()
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before


def test_version_folders_keep_their_numbers(tmp_path: Path) -> None:
    source = tmp_path / "models"
    for version in ("1", "3"):
        _files(source / version, MODEL_FILE, CARD_FILE)
    (source / "notes").mkdir()  # not a version: ignored

    root = mirror(source, "ann", tmp_path / "repo")

    assert scan(root) == {"ann": [1, 3]}
    assert ServedModel.load(root / "ann" / "3").version == 3


@pytest.mark.parametrize("file_name", [MODEL_FILE, "classifier.onnx"])
def test_a_bare_graph_is_version_1_and_served_with_a_derived_card(
    tmp_path: Path, file_name: str
) -> None:
    source = tmp_path / "models"
    source.mkdir()
    shutil.copy(ANN / MODEL_FILE, source / file_name)

    root = mirror(source, "mine", tmp_path / "repo")

    assert scan(root, bare=True) == {"mine": [1]}
    model = ServedModel.load(root / "mine" / "1", bare="serve")
    assert model.card.provenance.origin == "derived"


def test_what_cannot_be_served_says_why(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RepositoryError, match=r"must hold model\.onnx or exactly one \.onnx file"):
        mirror(empty, "ann", tmp_path / "r1")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.onnx", "b.onnx"):
        shutil.copy(ANN / MODEL_FILE, two / name)
    with pytest.raises(RepositoryError, match=r"found a\.onnx, b\.onnx"):
        mirror(two, "ann", tmp_path / "r2")
    with pytest.raises(RepositoryError, match="model name 'Bad_Name' is not valid"):
        mirror(ANN, "Bad_Name", tmp_path / "r3")
    with pytest.raises(RepositoryError, match="is not a directory"):
        mirror(tmp_path / "missing", "ann", tmp_path / "r4")
