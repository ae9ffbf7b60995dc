"""``python -m modelrepo import FILE --name NAME [...]``: put an ONNX file from anywhere into
the model repository as the next version of NAME (see ``modelrepo.importer``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m modelrepo", description=__doc__.split("\n")[0])
    commands = root.add_subparsers(dest="command", required=True)
    command = commands.add_parser(
        "import",
        help="import an ONNX file as the next version of a model",
        description="Check an ONNX file (onnx.checker, opset, one FP32 input with a dynamic "
        "batch axis), record onnxruntime's outputs on reference inputs as its self-check, "
        "and publish it atomically with a complete model.json.",
    )
    command.add_argument("file", type=Path, help="the .onnx file")
    command.add_argument("--name", required=True, help="model name: [a-z0-9][a-z0-9-]{0,62}")
    command.add_argument("--repository", type=Path, default=Path("models"), help="default: models")
    command.add_argument(
        "--task", choices=["classification", "regression"], default="classification"
    )
    command.add_argument(
        "--labels",
        help="class labels in output order, comma-separated, or @FILE with one per line "
        "(classification)",
    )
    command.add_argument(
        "--samples",
        type=Path,
        help=".npy array of real inputs [n, ...] for the self-check (default: generated "
        "from the input's declared shape)",
    )
    command.add_argument("--description", default="", help="one line for the card")
    return root


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    from modelrepo.graph import GraphError
    from modelrepo.importer import import_onnx
    from modelrepo.layout import RepositoryError

    try:
        labels, samples = _labels(args.labels), _samples(args.samples)
        version, folder = import_onnx(
            args.file,
            args.repository,
            args.name,
            task=args.task,
            labels=labels,
            samples=samples,
            description=args.description,
            command=shlex.join(["python", "-m", "modelrepo", *argv]),
        )
    except (GraphError, RepositoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.name}: imported {args.file} as version {version} at {folder}")
    return 0


def _labels(text: str | None) -> list[str] | None:
    from modelrepo.graph import GraphError

    if text is None:
        return None
    if text.startswith("@"):
        try:
            lines = Path(text[1:]).read_text().splitlines()
        except OSError as exc:
            raise GraphError(f"cannot read labels from {text[1:]}: {exc.strerror}") from exc
        return [line.strip() for line in lines if line.strip()]
    return [label.strip() for label in text.split(",") if label.strip()]


def _samples(path: Path | None) -> np.ndarray | None:
    from modelrepo.graph import GraphError

    if path is None:
        return None
    try:
        samples = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise GraphError(f"cannot read samples from {path}: {exc}") from exc
    return np.asarray(samples)


if __name__ == "__main__":
    sys.exit(main())
