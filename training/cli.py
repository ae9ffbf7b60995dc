"""``python -m training <model|all> [options]``: train, export and publish new versions."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from modelrepo import RepositoryError
from training.errors import TrainingError
from training.pipeline import run
from training.recipes import RECIPES


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train a network on its dataset, export it to ONNX, check parity with "
        "onnxruntime and publish it as the next version in the model repository.",
    )
    parser.add_argument("model", choices=[*RECIPES, "all"], help="which model to train")
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path("models"),
        help="model repository folder (default: models)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small stratified subset and few epochs: same code path, for tests",
    )
    parser.add_argument("--epochs", type=int, help="maximum epochs (early stopping may end sooner)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--lr", type=float, help="learning rate")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--dropout", type=float)
    parser.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    parser.add_argument("--optimizer", choices=["adam", "sgd"])
    parser.add_argument("--hidden", type=int, help="hidden width / LSTM state size")
    parser.add_argument("--threads", type=int, help="torch threads (default 2)")
    return parser.parse_args(argv)


def check_repository(path: Path) -> None:
    """Fail before training, not after it, when the repository cannot take a new version."""
    if not path.is_dir():
        raise RepositoryError(f"model repository {path} does not exist or is not a directory")
    try:
        Path(tempfile.mkdtemp(prefix=".write-check-", dir=path)).rmdir()
    except OSError as exc:
        raise RepositoryError(f"model repository {path} is not writable ({exc.strerror})") from exc


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    names = list(RECIPES) if args.model == "all" else [args.model]
    try:
        check_repository(args.repository)
        configs = []
        for name in names:
            config = RECIPES[name].defaults.replace(
                epochs=args.epochs if args.epochs is not None else (2 if args.quick else None),
                seed=args.seed,
                lr=args.lr,
                batch_size=args.batch_size,
                weight_decay=args.weight_decay,
                dropout=args.dropout,
                patience=args.patience,
                optimizer=args.optimizer,
                hidden=args.hidden,
                threads=args.threads,
                quick=args.quick or None,
            )
            configs.append(config.validate())
        for name, config in zip(names, configs, strict=True):
            run(RECIPES[name], config, args.repository)
    except (TrainingError, RepositoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was published", file=sys.stderr)
        return 130
    return 0
