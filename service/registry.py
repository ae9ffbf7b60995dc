"""Which model versions are served: loads the repository and answers look-ups.

The served set is a dict replaced as a whole (never mutated in place), so a request that
has looked a version up keeps using it even if a reload swaps another in beside it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from modelrepo import RepositoryError, is_valid_name, scan, version_dir
from service.errors import LoadError, ModelNotFound, ModelNotReady
from service.metrics import Metrics
from service.model import ServedModel

log = logging.getLogger("nnserve.registry")


@dataclass(frozen=True)
class Failure:
    version: int
    reason: str
    message: str


class Registry:
    def __init__(
        self, root: Path, metrics: Metrics, *, threads: int = 1, self_check: bool = True
    ) -> None:
        self.root = root
        self.metrics = metrics
        self.threads = threads
        self.self_check = self_check
        self.served: dict[str, dict[int, ServedModel]] = {}
        self.failures: dict[str, dict[int, Failure]] = {}
        self.expected: set[str] = set()

    # -- loading ---------------------------------------------------------------------------
    def load_all(self) -> None:
        """Serve the newest version of every model that passes its checks."""
        try:
            found = scan(self.root)
        except RepositoryError as exc:
            log.error("cannot scan the model repository: %s", exc)
            found = {}
        self.expected = set(found)
        served: dict[str, dict[int, ServedModel]] = {}
        for name, versions in found.items():
            for version in reversed(versions):
                model = self._load(name, version)
                if model is not None:
                    served[name] = {version: model}
                    break
        self.served = served
        log.info("serving %s", {n: sorted(v) for n, v in served.items()} or "nothing")

    def _load(self, name: str, version: int) -> ServedModel | None:
        try:
            model = ServedModel.load(
                version_dir(self.root, name, version),
                threads=self.threads,
                self_check=self.self_check,
            )
        except LoadError as exc:
            self.failures.setdefault(name, {})[version] = Failure(version, exc.reason, str(exc))
            self.metrics.load_failed(name, exc.reason)
            log.error("refused %s version %d: %s", name, version, exc)
            return None
        model.metrics = self.metrics.version_loaded(model.card, model.load_seconds)
        self.failures.get(name, {}).pop(version, None)
        log.info("loaded %s version %d in %.3fs", name, version, model.load_seconds)
        return model

    def unload_all(self) -> None:
        for versions in self.served.values():
            for model in versions.values():
                self.metrics.version_unloaded(model.card)
        self.served = {}

    # -- look-ups --------------------------------------------------------------------------
    def get(self, name: str, version: int | None = None) -> ServedModel:
        """The served version asked for, or the newest served one; raises 404 / 503."""
        versions = self.served.get(name)
        if not versions:
            if name in self.expected or name in self.failures:
                raise ModelNotReady(
                    f"model {name!r} is not ready: no version passed its load checks"
                )
            raise ModelNotFound(
                f"unknown model {name!r}; available: {sorted(self.served) or 'none'}"
            )
        if version is None:
            return versions[max(versions)]
        model = versions.get(version)
        if model is None:
            raise ModelNotFound(
                f"model {name!r} has no version {version} being served; served: {sorted(versions)}"
            )
        return model

    def knows(self, name: str) -> bool:
        return name in self.served or name in self.expected

    def ready(self) -> bool:
        return bool(self.expected) and all(self.served.get(n) for n in self.expected)

    @staticmethod
    def parse_version(text: str) -> int:
        if not text.isdigit() or text.startswith("0") or len(text) > 18:
            raise ModelNotFound(f"version {text!r} is not a positive integer")
        return int(text)

    @staticmethod
    def check_name(name: str) -> None:
        if not is_valid_name(name):
            raise ModelNotFound(f"unknown model {name!r}")
