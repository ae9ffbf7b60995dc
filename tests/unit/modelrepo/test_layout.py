"""The repository layout: scanning ignores what is not a version; publishing is atomic."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from modelrepo import CARD_FILE, MODEL_FILE, ModelCard, PublishError, publish, read_card, scan
from tests.support.paths import MODELS


def sample_card(version: int = 1, name: str = "breast-cancer-ann") -> ModelCard:
    card = read_card(MODELS / "breast-cancer-ann" / "1")
    return card.model_copy(update={"version": version, "name": name})


def write_version(root: Path, name: str, version: str, *, card: bool = True) -> Path:
    folder = root / name / version
    folder.mkdir(parents=True)
    (folder / MODEL_FILE).write_bytes(b"onnx")
    if card:
        (folder / CARD_FILE).write_text(sample_card().to_json())
    return folder


def test_scan_keeps_only_valid_names_and_versions(tmp_path: Path) -> None:
    write_version(tmp_path, "good-model", "1")
    write_version(tmp_path, "good-model", "12")
    for bad_version in ("0", "01", "-1", "v2", "1.0", ".publishing-abc"):
        write_version(tmp_path, "good-model", bad_version)
    write_version(tmp_path, "good-model", "3", card=False)  # incomplete: no model.json
    (tmp_path / "good-model" / "4").write_text("a file, not a folder")
    for bad_name in ("Bad", "-lead", "under_score", "a" * 64, ".hidden"):
        write_version(tmp_path, bad_name, "1")
    (tmp_path / "README.txt").write_text("ignored")
    assert scan(tmp_path) == {"good-model": [1, 12]}


def test_scan_does_not_follow_links_out_of_the_repository(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_version(outside, "evil", "1")
    root = tmp_path / "repo"
    (root / "ok").mkdir(parents=True)
    os.symlink(outside / "evil", root / "evil")
    os.symlink(outside / "evil" / "1", root / "ok" / "1")
    assert scan(root) == {}


def test_publish_claims_successive_versions(tmp_path: Path) -> None:
    def write(folder: Path) -> None:
        (folder / MODEL_FILE).write_bytes(b"weights")

    first = publish(tmp_path, "breast-cancer-ann", write, sample_card)
    second = publish(tmp_path, "breast-cancer-ann", write, sample_card)
    assert [first[0], second[0]] == [1, 2]
    assert read_card(second[1]).version == 2
    assert scan(tmp_path) == {"breast-cancer-ann": [1, 2]}
    assert sorted(p.name for p in (tmp_path / "breast-cancer-ann").iterdir()) == ["1", "2"]


def test_concurrent_publishers_never_share_a_version(tmp_path: Path) -> None:
    def write(folder: Path) -> None:
        (folder / MODEL_FILE).write_bytes(b"weights")

    claimed: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: claimed.append(
                publish(tmp_path, "breast-cancer-ann", write, sample_card)[0]
            )
        )
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(1, 9))
    for v in claimed:
        assert read_card(tmp_path / "breast-cancer-ann" / str(v)).version == v


@pytest.mark.parametrize("fail_in", ["write", "card"])
def test_failed_publish_leaves_nothing_visible(tmp_path: Path, fail_in: str) -> None:
    def write(folder: Path) -> None:
        (folder / MODEL_FILE).write_bytes(b"half a model")
        if fail_in == "write":
            raise RuntimeError("disk on fire")

    def card(version: int) -> ModelCard:
        if fail_in == "card":
            raise RuntimeError("metadata on fire")
        return sample_card(version)

    with pytest.raises(RuntimeError, match="on fire"):
        publish(tmp_path, "new-model", write, card)
    assert scan(tmp_path) == {}
    assert list(tmp_path.iterdir()) == []  # not even the model folder it created

    # an existing model keeps exactly its versions, with no stray temporary folder
    publish(tmp_path, "new-model", lambda f: (f / MODEL_FILE).write_bytes(b"ok"), sample_card)
    with pytest.raises(RuntimeError):
        publish(tmp_path, "new-model", write, card)
    assert [p.name for p in (tmp_path / "new-model").iterdir()] == ["1"]


def test_publish_refuses_bad_names_and_missing_repositories(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="invalid model name"):
        publish(tmp_path, "../escape", lambda f: None, sample_card)
    with pytest.raises(PublishError, match="not a directory"):
        publish(tmp_path / "missing", "fine", lambda f: None, sample_card)
    assert list(tmp_path.iterdir()) == []
