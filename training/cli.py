"""``python -m training <model|all> [options]``: train, export and publish new versions.
``python -m training retrain <model> [--feedback URL] [--tolerance T]``: champion/challenger.
``python -m training quantize <model>``: an int8 variant, published if it passes its gate.
``python -m training forecast <co2-lstm|co2-gru|all>``: the CO2 forecasters."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

import torch.distributed as dist

from modelrepo import RepositoryError
from training import distributed
from training.config import TrainConfig
from training.errors import ConfigError, TrainingError
from training.forecast import FORECASTERS
from training.pipeline import run
from training.recipes import RECIPES, load_recipe_file


def _options() -> argparse.ArgumentParser:
    """The options both commands take: where to publish, and one option per field of
    :class:`TrainConfig` (``--batch-size`` for ``batch_size``) with the field's help."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--repository",
        type=Path,
        default=Path("models"),
        help="model repository folder (default: models)",
    )
    common.add_argument(
        "--recipe-file",
        type=Path,
        action="append",
        default=[],
        help="a .py file defining RECIPE = training.recipes.Recipe(...): a model of your own "
        "(repeatable; see examples/wine_recipe.py)",
    )
    settings = common.add_argument_group(
        "training settings", "defaults differ per model: see training/recipes.py"
    )
    types = get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        option, kind = "--" + field.name.replace("_", "-"), types[field.name]
        help = field.metadata["help"]
        # default None everywhere: an option that is absent leaves the recipe's default alone
        if kind is bool:
            settings.add_argument(option, action="store_true", default=None, help=help)
        elif get_origin(kind) is Literal:
            settings.add_argument(option, choices=get_args(kind), help=help)
        else:
            settings.add_argument(option, type=kind, help=help)
    return common


def _with_checkpoint_dir(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` with the option of the commands that train under torchrun."""
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="run folder: a checkpoint every epoch into DIR/<model>/, resumed from when the "
        "command runs again (torchrun --max-restarts restarts it); shared by every machine "
        "of a torchrun run (default: no checkpoints)",
    )
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The arguments; ``--recipe-file`` recipes are loaded first, so that they are choices."""
    files = argparse.ArgumentParser(add_help=False)
    files.add_argument("--recipe-file", type=Path, action="append", default=[])
    for path in files.parse_known_args(argv)[0].recipe_file:
        load_recipe_file(path)
    if argv[:1] == ["forecast"]:
        from training.forecast import parse_args as parse_forecast

        return parse_forecast(argv[1:], _with_checkpoint_dir(_options()))
    if argv[:1] == ["quantize"]:
        from training.quantize import parse_args

        return parse_args(argv[1:])
    common = _options()
    if argv[:1] == ["retrain"]:
        parser = argparse.ArgumentParser(
            prog="python -m training retrain",
            parents=[common],
            description="Train a challenger on the base data plus labelled feedback and "
            "publish it only if it is not worse than the champion by more than "
            "the tolerance; writes a report either way.",
        )
        parser.add_argument("model", choices=[*RECIPES, *FORECASTERS])
        source = parser.add_mutually_exclusive_group()
        source.add_argument(
            "--feedback",
            metavar="STORE_URL",
            help="prediction log with feedback: a SQLite path / sqlite:///path "
            "or postgresql://... (default: no feedback)",
        )
        source.add_argument(
            "--feedback-env",
            metavar="VARIABLE",
            help="the same URL, read from this environment variable (keeps a password off "
            "the command line, e.g. NNSERVE_PREDICTION_LOG_URL from a Kubernetes Secret)",
        )
        parser.add_argument(
            "--tolerance",
            type=float,
            default=0.005,
            help="largest accuracy drop accepted; a forecaster's: largest test-MASE rise "
            "(default 0.005)",
        )
        parser.add_argument(
            "--report-dir",
            type=Path,
            default=Path("reports"),
            help="where the JSON + Markdown reports go (default: reports)",
        )
        args = parser.parse_args(argv[1:])
        if args.feedback_env:
            args.feedback = os.environ.get(args.feedback_env)
            if not args.feedback:
                raise ConfigError(f"--feedback-env {args.feedback_env}: the variable is not set")
        args.command = "retrain"
        return args
    parser = argparse.ArgumentParser(
        prog="python -m training",
        parents=[common],
        description="Train a network on its dataset, export it to ONNX, check parity with "
        "onnxruntime and publish it as the next version in the model repository. "
        "(`python -m training retrain -h` for champion/challenger retraining, "
        "`python -m training forecast -h` for the CO2 forecasters.)",
    )
    parser.add_argument("model", choices=[*RECIPES, "all"], help="which model to train")
    args = _with_checkpoint_dir(parser).parse_args(argv)
    args.command = "train"
    return args


def check_repository(path: Path) -> None:
    """Fail before training, not after it, when the repository cannot take a new version."""
    if not path.is_dir():
        raise RepositoryError(f"model repository {path} does not exist or is not a directory")
    try:
        Path(tempfile.mkdtemp(prefix=".write-check-", dir=path)).rmdir()
    except OSError as exc:
        raise RepositoryError(f"model repository {path} is not writable ({exc.strerror})") from exc


def config_for(name: str, args: argparse.Namespace) -> TrainConfig:
    """The recipe's defaults with every setting given on the command line; ``--quick`` alone
    also means 2 epochs."""
    return RECIPES[name].defaults.replace(**_given(args)).validate()


def _given(args: argparse.Namespace) -> dict[str, object]:
    """Every training setting given on the command line; ``--quick`` alone also means 2
    epochs."""
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)}
    if args.quick and args.epochs is None:
        given["epochs"] = 2
    return given


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        group = distributed.from_environment()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = f"rank {group.rank}: " if group.distributed else ""
    try:
        if group.main:  # the one process that writes into the repository
            check_repository(args.repository)
        if args.command == "forecast":
            from training.forecast import command as forecast

            given = _given(args)
            with distributed.launched() as group:
                forecast(args, given, group)
            return 0
        if args.command == "quantize":
            if group.distributed:  # it trains nothing: every process would publish a copy
                raise ConfigError("quantize trains nothing and runs in one process: start it "
                                  "without torchrun")  # fmt: skip
            from training.quantize import command

            command(args)
            return 0
        if args.command == "retrain":
            if group.distributed:
                raise ConfigError("retrain runs in one process: start it without torchrun")
            if args.model in FORECASTERS:
                from training.retrain_forecast import retrain_forecaster

                recipe = FORECASTERS[args.model]
                retrain_forecaster(
                    recipe,
                    recipe.defaults.replace(**_given(args)).validate(),
                    args.repository,
                    args.feedback,
                    args.tolerance,
                    args.report_dir,
                )
                return 0
            from training.retrain import retrain

            retrain(
                RECIPES[args.model],
                config_for(args.model, args),
                args.repository,
                args.feedback,
                args.tolerance,
                args.report_dir,
            )
            return 0
        names = list(RECIPES) if args.model == "all" else [args.model]
        configs = [config_for(name, args) for name in names]
        with distributed.launched() as group:
            for name, config in zip(names, configs, strict=True):
                run(RECIPES[name], config, args.repository, group, args.checkpoint_dir)
    except (TrainingError, RepositoryError, ValueError) as exc:
        print(f"error: {where}{exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if not (isinstance(exc, dist.DistError) or (group.distributed and "gloo" in str(exc))):
            raise  # a bug: its traceback
        # another process of the run failed or vanished (gloo: the connection to it broke)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(
            f"error: {where}lost the other processes of the run ({first}); nothing was published",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was published", file=sys.stderr)
        return 130
    return 0
