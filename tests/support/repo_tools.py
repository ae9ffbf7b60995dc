"""Publishing test versions into a temporary copy of the repository, the way training does."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from modelrepo import MODEL_FILE, ModelCard, publish, read_card
from tests.support.paths import MODELS


def copy_models(tmp_path: Path, *names: str) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    for name in names or ("breast-cancer-ann", "fashion-cnn", "vowels-lstm"):
        shutil.copytree(MODELS / name / "1", root / name / "1")
    return root


def publish_copy(
    root: Path,
    name: str,
    *,
    corrupt_onnx: bool = False,
    edit_card: Callable[[ModelCard], ModelCard] | None = None,
) -> int:
    """Publish v1 of ``name`` again as the next version (atomically, via modelrepo.publish)."""
    source = MODELS / name / "1"
    card = read_card(source)

    def write(folder: Path) -> None:
        data = (source / MODEL_FILE).read_bytes()
        if corrupt_onnx:
            data = data[:100] + b"\x00corrupted\x00" + data[111:]
        (folder / MODEL_FILE).write_bytes(data)

    def make(version: int) -> ModelCard:
        new = card.model_copy(update={"version": version})
        return edit_card(new) if edit_card is not None else new

    version, _ = publish(root, name, write, make)
    return version


def wrong_reference(card: ModelCard) -> ModelCard:
    """A card whose reference outputs the graph does not reproduce."""
    case = card.reference[0]
    bad = case.outputs[0].model_copy(update={"data": [v + 1.0 for v in case.outputs[0].data]})
    return card.model_copy(
        update={
            "reference": [
                case.model_copy(update={"outputs": [bad, *case.outputs[1:]]}),
                *card.reference[1:],
            ]
        }
    )
