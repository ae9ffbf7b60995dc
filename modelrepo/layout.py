"""Reading and atomically writing ``<root>/<name>/<version>/`` folders.

A published version is immutable: :func:`publish` builds it in a hidden temporary folder
beside its target, flushes every file, then renames the folder to the next free version
number, so a reader sees either no version or a complete one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from modelrepo.card import ModelCard, is_valid_name

log = logging.getLogger("modelrepo")

MODEL_FILE = "model.onnx"
CARD_FILE = "model.json"
_VERSION_RE = re.compile(r"[1-9][0-9]{0,17}")
_TMP_PREFIX = ".publishing-"


class RepositoryError(Exception):
    """The repository folder is missing, unreadable or not writable."""


class PublishError(RepositoryError):
    """A version could not be published; nothing was left visible."""


def is_valid_version(text: str) -> bool:
    return _VERSION_RE.fullmatch(text) is not None


def version_dir(root: Path, name: str, version: int) -> Path:
    if not is_valid_name(name) or version < 1:
        raise ValueError(f"invalid model name or version: {name!r}/{version!r}")
    return root / name / str(version)


def scan(root: Path, bare: bool = False) -> dict[str, list[int]]:
    """Every loadable ``name -> sorted versions`` under ``root``; the rest is logged and skipped.

    A version folder counts only when it holds both ``model.onnx`` and ``model.json`` (with
    ``bare``, also ``model.onnx`` alone: the service decides what to do with it); symbolic
    links are never followed out of the repository.
    """
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} is not a directory")
    found: dict[str, list[int]] = {}
    resolved_root = root.resolve()
    for model_path in sorted(root.iterdir()):
        if not is_valid_name(model_path.name) or not model_path.is_dir():
            log.info("repository: ignoring %s (not a model folder)", model_path)
            continue
        if not _inside(model_path, resolved_root):
            log.warning("repository: ignoring %s (points outside the repository)", model_path)
            continue
        versions = []
        for entry in model_path.iterdir():
            if entry.name.startswith(_TMP_PREFIX):
                continue  # a publish in progress (or one that died): never loaded
            if not is_valid_version(entry.name) or not entry.is_dir():
                log.info("repository: ignoring %s (not a version folder)", entry)
            elif not _inside(entry, resolved_root):
                log.warning("repository: ignoring %s (points outside the repository)", entry)
            elif not (entry / MODEL_FILE).is_file() or not (bare or (entry / CARD_FILE).is_file()):
                log.warning(
                    "repository: ignoring %s (needs %s and %s)", entry, MODEL_FILE, CARD_FILE
                )
            else:
                versions.append(int(entry.name))
        if versions:
            found[model_path.name] = sorted(versions)
    return found


def _inside(path: Path, resolved_root: Path) -> bool:
    return path.resolve().is_relative_to(resolved_root)


def read_card(folder: Path) -> ModelCard:
    """Parse ``folder/model.json`` (raises ``pydantic.ValidationError`` or ``OSError``)."""
    return ModelCard.model_validate_json((folder / CARD_FILE).read_bytes())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def publish(
    root: Path, name: str, write: Callable[[Path], None], card: Callable[[int], ModelCard]
) -> tuple[int, Path]:
    """Publish a new version of ``name``; returns ``(version, folder)``.

    ``write(tmp)`` puts ``model.onnx`` and any side files (plots, reports) into ``tmp``;
    ``card(version)`` returns the metadata for the version number finally claimed. Any
    exception leaves the repository as it was.
    """
    if not is_valid_name(name):
        raise PublishError(f"invalid model name {name!r}: expected [a-z0-9][a-z0-9-]{{0,62}}")
    if not root.is_dir():
        raise PublishError(f"model repository {root} is not a directory")
    if not os.access(root, os.W_OK | os.X_OK):
        raise PublishError(f"model repository {root} is not writable")
    model_root = root / name
    created_model_root = not model_root.exists()
    try:
        model_root.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=model_root))
    except OSError as exc:
        raise PublishError(f"cannot write into {model_root}: {exc}") from exc
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a published version is world-readable
        write(tmp)
        for _attempt in range(100):
            existing = [int(p.name) for p in model_root.iterdir() if is_valid_version(p.name)]
            version = max(existing, default=0) + 1
            (tmp / CARD_FILE).write_text(card(version).to_json())
            _fsync_tree(tmp)
            target = model_root / str(version)
            if target.exists():
                continue  # another publisher claimed this number first
            try:
                os.rename(tmp, target)
            except OSError:
                continue
            _fsync_dir(model_root)
            log.info("published %s version %d at %s", name, version, target)
            return version, target
        raise PublishError(f"could not claim a free version number for {name}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_model_root:
            with contextlib.suppress(OSError):
                model_root.rmdir()
        raise


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
