"""One model's folder seen as a one-model repository: how KServe hands a model to a runtime.

KServe's storage initializer leaves the model under ``/mnt/models`` and starts the serving
runtime with the InferenceService's name (``--model_name``) and that folder
(``--model_dir``). What the folder holds depends on who put it there: version folders
(``1/model.onnx`` + ``model.json``, as this repository publishes them), one version's files
directly, or a bare ``model.onnx`` (any ``*.onnx`` file, when it is the only one), as a
KServe user's storage usually holds it.

:func:`mirror` builds a repository serving that folder under ``name``, in a writable folder
of the caller's (the service's run folder): real version folders whose files are links to
the originals (read-only, never copied), except ``model.json``, which is written again under
``name`` (a card must name its own folder; the graph's sha256 still has to match). The
mirror is taken once, at start: KServe rolls out a new model as a new pod.
"""

from __future__ import annotations

from pathlib import Path

from modelrepo.card import NAME_PATTERN, is_valid_name
from modelrepo.layout import CARD_FILE, MODEL_FILE, RepositoryError, is_valid_version, read_card


def mirror(model_dir: Path, name: str, root: Path) -> Path:
    """``root`` (created) as a repository of the one model in ``model_dir``, named ``name``;
    :class:`RepositoryError` saying what is wrong with either."""
    if not is_valid_name(name):
        raise RepositoryError(f"model name {name!r} is not valid: it must match {NAME_PATTERN}")
    if not model_dir.is_dir():
        raise RepositoryError(f"model dir {model_dir} is not a directory")
    versions = {
        int(entry.name): entry
        for entry in model_dir.iterdir()
        if is_valid_version(entry.name) and entry.is_dir()
    }
    if not versions:  # one version's files, directly
        versions = {_card_version(model_dir): model_dir}
    for version, source in sorted(versions.items()):
        _mirror_version(source, root / name / str(version), name, version)
    return root


def _card_version(folder: Path) -> int:
    """The version its card names (1 without a readable card)."""
    try:
        return read_card(folder).version
    except (OSError, ValueError):
        return 1


def _mirror_version(source: Path, target: Path, name: str, version: int) -> None:
    graphs = sorted(p for p in source.iterdir() if p.suffix == ".onnx" and p.is_file())
    if (source / MODEL_FILE).is_file():
        graph = source / MODEL_FILE
    elif len(graphs) == 1:
        graph = graphs[0]
    else:
        found = ", ".join(p.name for p in graphs) or "no .onnx file"
        raise RepositoryError(
            f"{source} must hold {MODEL_FILE} or exactly one .onnx file (found {found})"
        )
    target.mkdir(parents=True)
    (target / MODEL_FILE).symlink_to(graph.resolve())
    for entry in source.iterdir():  # external tensor data, plots, ... beside the graph
        if entry.is_file() and entry.name not in (MODEL_FILE, CARD_FILE) and entry != graph:
            (target / entry.name).symlink_to(entry.resolve())
    if (source / CARD_FILE).is_file():
        try:
            card = read_card(source).model_copy(update={"name": name, "version": version})
        except (OSError, ValueError):  # the loader reports it, with its reason
            (target / CARD_FILE).symlink_to((source / CARD_FILE).resolve())
        else:
            (target / CARD_FILE).write_text(card.to_json())
