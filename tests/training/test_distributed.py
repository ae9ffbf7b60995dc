"""Training under torchrun (training/distributed.py, training/checkpoint.py): two hosts (network
namespaces joined by a veth pair, one torchrun node in each, c10d rendezvous over the veth
addresses) train to a published version that the service loads and that is as good as a
single process's; rank 0 alone writes the repository; a worker killed mid-epoch resumes from
the checkpoint; a failure on any rank publishes nothing. And in one process: the shares of
an epoch, and a resumed run that is the uninterrupted run, figure for figure."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from modelrepo import read_card, scan
from service.runtime.model import ServedModel
from tests.support.netns import TORCHRUN, Host, torchrun_node, two_hosts
from tests.support.paths import MODELS, ROOT
from training.checkpoint import CHECKPOINT, PUBLISHED, RUN_ID, RunFolder, State
from training.cli import main
from training.distributed import SINGLE, EpochOrder, Group, from_environment
from training.errors import ConfigError, TrainingError
from training.pipeline import fit, load_dataset, split_data
from training.recipes import RECIPES

# patience 10 (default 20): about 30 epochs instead of 90, and the same agreement
ANN = ["breast-cancer-ann", "--threads", "1", "--patience", "10"]
TIMEOUT = 300


# -- helpers ---------------------------------------------------------------------------------
@dataclass
class Node:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start(commands: Sequence[list[str]], logs: Path) -> list[Node]:
    logs.mkdir(exist_ok=True)
    nodes = []
    for i, command in enumerate(commands):
        log = logs / f"node-{i}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        nodes.append(Node(process, log))
    return nodes


def finish(nodes: list[Node]) -> None:
    deadline = time.monotonic() + TIMEOUT
    for node in nodes:
        node.process.wait(timeout=max(1.0, deadline - time.monotonic()))


def on_two_hosts(
    a: Host, b: Host, argv: Callable[[Host], list[str]], logs: Path, max_restarts: int = 0
) -> list[Node]:
    return start(
        [torchrun_node(h, a, logs.parent.name, argv(h), max_restarts) for h in (a, b)], logs
    )


def seeded_repository(path: Path) -> Path:
    """A repository holding a copy of the committed breast-cancer-ann version 1."""
    shutil.copytree(MODELS / "breast-cancer-ann" / "1", path / "breast-cancer-ann" / "1")
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every entry under ``root`` (itself included): mtime, size and content."""
    found = {}
    for path in [root, *sorted(root.rglob("*"))]:
        stat = path.stat()
        content = path.read_bytes() if path.is_file() else b""
        found[str(path.relative_to(root))] = (stat.st_mtime_ns, stat.st_size, content)
    return found


def descendants(pid: int) -> Iterator[int]:
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in map(int, children):
            yield child
            yield from descendants(child)


def worker_of_rank(nodes: list[Node], rank: int) -> int:
    """The pid of the training process torchrun started as ``rank``."""
    for node in nodes:
        for pid in descendants(node.process.pid):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b" ".join(env):
                return pid
    raise AssertionError(f"no worker of rank {rank} is running")


def wait_for(path: Path, nodes: list[Node]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert all(n.process.poll() is None for n in nodes), [n.output()[-2000:] for n in nodes]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def alone(argv: list[str], repository: Path) -> Path:
    """``python -m training argv`` in one process: the folder of the version published."""
    repository.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "training", *argv, "--repository", str(repository)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (name,) = scan(repository)
    return repository / name / "1"


@pytest.fixture(scope="module")
def reference_accuracy(tmp_path_factory: pytest.TempPathFactory) -> float:
    """breast-cancer-ann in one process, same global batch and seed."""
    folder = alone(ANN, tmp_path_factory.mktemp("reference"))
    return read_card(folder).metrics.accuracy


# -- two hosts -------------------------------------------------------------------------------
def test_two_hosts_publish_from_rank_zero_as_good_as_one_process(
    tmp_path: Path, reference_accuracy: float
) -> None:
    """Each host has a repository of its own: the one of rank 0's host gets the new version,
    the other is untouched (contents and timestamps)."""
    runs = tmp_path / "runs"
    with two_hosts() as (a, b):
        repositories = {h: seeded_repository(tmp_path / f"repo-{h.address}") for h in (a, b)}
        before = {h: snapshot(r) for h, r in repositories.items()}
        nodes = on_two_hosts(
            a,
            b,
            lambda h: [*ANN, "--repository", str(repositories[h]), "--checkpoint-dir", str(runs)],
            tmp_path / "logs",
        )
        finish(nodes)
    for node in nodes:
        assert node.process.returncode == 0, node.output()[-3000:]
    (writer,) = [h for h in (a, b) if snapshot(repositories[h]) != before[h]]
    (reader,) = {a, b} - {writer}
    assert snapshot(repositories[reader]) == before[reader]
    assert scan(repositories[writer]) == {"breast-cancer-ann": [1, 2]}
    folder = repositories[writer] / "breast-cancer-ann" / "2"
    model = ServedModel.load(folder)  # the service's load-time self-check
    assert abs(model.card.metrics.accuracy - reference_accuracy) <= 0.01
    assert "x 2 processes (gloo)" in model.card.provenance.trained_on
    spread = json.loads((folder / "run.json").read_text())["distributed"]
    assert spread == {
        "processes": 2,
        "backend": "gloo",
        "global_batch_size": 32,
        "batch_size_per_process": 16,
        "lr": 1e-3,
        "restarts": 0,
    }
    published = [n for n in nodes if f"published version 2 at {folder}" in n.output()]
    assert len(published) == 1


def test_two_hosts_train_the_cnn_as_one_process_does(tmp_path: Path, fashion_mnist: None) -> None:
    """The single-process reference with the same global batch and seed computes each step
    as the two hosts do (``--micro-batches 2``: each half of the batch from the sampler share
    of a rank, batch norm over it, its own dropout and flip streams): a quick run is far from
    converged (one process without micro-batches: 56-69 % over seeds 0-3), so only the same
    computation, up to the order of float additions, can be held to 1 point."""
    cnn = ["fashion-cnn", "--quick", "--threads", "1"]
    reference = alone([*cnn, "--micro-batches", "2"], tmp_path / "reference")
    repository = tmp_path / "models"
    repository.mkdir()
    with two_hosts() as (a, b):
        argv = [*cnn, "--repository", str(repository)]
        nodes = on_two_hosts(a, b, lambda _: argv, tmp_path / "logs")
        finish(nodes)
    for node in nodes:
        assert node.process.returncode == 0, node.output()[-3000:]
    assert scan(repository) == {"fashion-cnn": [1]}
    folder = repository / "fashion-cnn" / "1"
    model = ServedModel.load(folder)
    assert model.card.provenance.epochs_run == 2
    assert abs(model.card.metrics.accuracy - read_card(reference).metrics.accuracy) <= 0.01
    run, alone_run = (json.loads((f / "run.json").read_text()) for f in (folder, reference))
    assert run["history"]["val_loss"] == pytest.approx(alone_run["history"]["val_loss"], rel=1e-5)
    spread = run["distributed"]
    assert (spread["global_batch_size"], spread["batch_size_per_process"]) == (128, 64)


def test_a_rank_killed_mid_epoch_resumes_from_the_checkpoint(
    tmp_path: Path, reference_accuracy: float
) -> None:
    repository, runs = seeded_repository(tmp_path / "models"), tmp_path / "runs"
    argv = [*ANN, "--repository", str(repository), "--checkpoint-dir", str(runs)]
    with two_hosts() as (a, b):
        nodes = on_two_hosts(a, b, lambda _: argv, tmp_path / "logs", max_restarts=1)
        wait_for(runs / "breast-cancer-ann" / CHECKPOINT, nodes)
        os.kill(worker_of_rank(nodes, 1), signal.SIGKILL)
        finish(nodes)
    outputs = "".join(n.output() for n in nodes)
    for node in nodes:
        assert node.process.returncode == 0, node.output()[-3000:]
    assert scan(repository) == {"breast-cancer-ann": [1, 2]}  # exactly one new version
    card = ServedModel.load(repository / "breast-cancer-ann" / "2").card
    (resumed,) = [line for line in outputs.splitlines() if "resuming from the checkpoint" in line]
    epoch = int(resumed.split("of epoch ")[1].split()[0])
    assert 1 <= epoch < card.provenance.epochs_run  # killed before the end, went on after
    assert abs(card.metrics.accuracy - reference_accuracy) <= 0.01
    assert json.loads((runs / "breast-cancer-ann" / "published.json").read_text())["version"] == 2


def test_a_rank_lost_without_restarts_fails_the_run_and_publishes_nothing(tmp_path: Path) -> None:
    repository, runs = seeded_repository(tmp_path / "models"), tmp_path / "runs"
    before = snapshot(repository)
    argv = [*ANN, "--repository", str(repository), "--checkpoint-dir", str(runs)]
    nodes = start(
        [[str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "training", *argv]],
        tmp_path / "logs",
    )
    try:
        wait_for(runs / "breast-cancer-ann" / CHECKPOINT, nodes)
        os.kill(worker_of_rank(nodes, 1), signal.SIGKILL)
        finish(nodes)
    finally:
        if nodes[0].process.poll() is None:
            nodes[0].process.kill()
    (node,) = nodes
    assert node.process.returncode != 0
    assert "rank      : 1" in node.output() and "Signal 9 (SIGKILL)" in node.output()
    after = snapshot(repository)
    del before["."], after["."]  # the folder's own mtime: rank 0's write check before training
    assert after == before  # no new version, no leftover, the old one untouched


def test_a_failure_on_rank_zero_fails_every_rank_with_its_message(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "training", *ANN,
         "--quick", "--repository", "/proc"],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode != 0
    assert "error: rank 0: model repository /proc is not writable" in done.stderr
    assert "training FAILED" in done.stderr


def test_a_forecaster_trains_under_torchrun_as_one_process_does(tmp_path: Path) -> None:
    """co2-lstm on two processes: rank 0 alone publishes one version, the service loads it,
    and it is what one process computing the same two shares of each step publishes."""
    quick = ["forecast", "co2-lstm", "--quick", "--threads", "1"]
    reference = alone([*quick, "--micro-batches", "2"], tmp_path / "reference")
    repository, runs = tmp_path / "models", tmp_path / "runs"
    repository.mkdir()
    done = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "training", *quick,
         "--repository", str(repository), "--checkpoint-dir", str(runs)],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert scan(repository) == {"co2-lstm": [1]}
    assert json.loads((runs / "co2-lstm" / PUBLISHED).read_text())["version"] == 1
    assert (runs / "co2-lstm" / CHECKPOINT).is_file()
    assert done.stdout.count("co2-lstm: published version 1") == 1
    folder = repository / "co2-lstm" / "1"
    card = ServedModel.load(folder).card  # the service's load-time self-check
    assert "x 2 processes (gloo)" in card.provenance.trained_on
    run, alone_run = (json.loads((f / "run.json").read_text()) for f in (folder, reference))
    assert run["distributed"]["batch_size_per_process"] == 16
    assert run["history"]["val_loss"] == pytest.approx(alone_run["history"]["val_loss"], rel=1e-5)
    assert card.forecast is not None
    expected = read_card(reference).forecast
    assert expected is not None
    assert card.forecast.model_errors().mase == pytest.approx(
        expected.model_errors().mase, rel=1e-3
    )


def test_quantize_refuses_torchrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It trains nothing: every process would quantize and publish the same variant."""
    repository = seeded_repository(tmp_path / "models")
    before = snapshot(repository)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["quantize", "breast-cancer-ann", "--repository", str(repository)]) == 2
    assert "error: rank 1: quantize trains nothing and runs in one process" in (
        capsys.readouterr().err
    )
    assert snapshot(repository) == before


# -- in one process --------------------------------------------------------------------------
def test_without_torchrun_the_group_is_a_single_process() -> None:
    assert from_environment({}) is SINGLE
    assert from_environment({"WORLD_SIZE": "1", "RANK": "0"}) is SINGLE
    group = from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (group.rank, group.world_size, group.local_rank, group.main) == (3, 4, 1, False)
    with pytest.raises(ConfigError, match="RANK 4 is outside WORLD_SIZE 4"):
        from_environment({"WORLD_SIZE": "4", "RANK": "4"})
    with pytest.raises(ConfigError, match=r"batch size 30 .* not divisible by the 4 processes"):
        group.local_batch(30)
    assert SINGLE.sum([1.5, 2]) == [1.5, 2] and SINGLE.share("x") == "x" and SINGLE.all(True)


def test_the_shares_of_an_epoch_cover_it_in_equal_steps_and_reshuffle() -> None:
    n, world = 103, 4
    groups = [Group(rank, world) for rank in range(world)]
    orders = [EpochOrder(n, 32, 0, g, np.random.default_rng(0)) for g in groups]
    for epoch in (1, 2):
        shares = [[b for (b,) in order.steps(epoch)] for order in orders]
        assert {len(s) for s in shares} == {4}  # every process runs the same number of steps
        assert all(len(b) <= 8 for s in shares for b in s)  # 32 / 4 per process per step
        seen = np.concatenate([b for s in shares for b in s])
        assert set(seen.tolist()) == set(range(n)) and len(seen) == 104  # padded by one
        # one process in 4 micro-batches: the same shares of the same steps
        alone = EpochOrder(n, 32, 0, SINGLE, np.random.default_rng(0), micro_batches=4)
        for k, step in enumerate(alone.steps(epoch)):
            assert [b.tolist() for b in step] == [s[k].tolist() for s in shares]
    assert not np.array_equal(orders[0].steps(1)[0][0], orders[0].steps(2)[0][0])
    parts = [g.part(10) for g in groups]
    assert np.array_equal(np.concatenate(parts), np.arange(10))


def test_a_resumed_run_is_the_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process, a checkpoint every epoch: a run stopped after epoch 2 and started again
    gives the figures of a run that never stopped (weights, optimizer, scheduler, RNG)."""
    recipe = RECIPES["breast-cancer-ann"]
    config = recipe.defaults.replace(quick=True, epochs=5, threads=1)
    dataset = load_dataset(recipe, config)

    def train(folder: RunFolder | None) -> list[float]:
        from training.pipeline import seed_everything

        seed_everything(config.seed, config.threads)
        splits = split_data(recipe, config, dataset, None)
        _, history = fit(recipe, config, splits, len(dataset.labels), SINGLE, folder)
        return history.val_loss + history.train_loss

    uninterrupted = train(None)
    folder = RunFolder(tmp_path / "run", SINGLE, {"config": config.as_dict(), "processes": 1})
    saves = []
    original = RunFolder.save

    def save_then_die(self: RunFolder, state: State, rng: State) -> None:
        original(self, state, rng)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt  # the process dies after the checkpoint of epoch 2

    monkeypatch.setattr(RunFolder, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(folder)
    monkeypatch.setattr(RunFolder, "save", original)
    assert train(folder) == uninterrupted
    changed = {"config": {**config.as_dict(), "epochs": 6}, "processes": 1}
    with pytest.raises(TrainingError, match=r"another run \(epochs 5 -> 6\); use another"):
        RunFolder(tmp_path / "run", SINGLE, changed).load()


@pytest.mark.parametrize("command", [["breast-cancer-ann"], ["forecast", "co2-lstm"]])
def test_a_crash_between_publishing_and_recording_it_publishes_nothing_twice(
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The process dies after the new version is in the repository but before the run
    folder's published.json says so: started again, the run finds its version by the run id
    in its run.json, reports it and publishes nothing; another run publishes."""
    name = command[-1]
    repository, runs = seeded_repository(tmp_path / "models"), tmp_path / "runs"
    argv = [*command, "--quick", "--threads", "1", "--repository", str(repository)]
    before = scan(repository).get(name, [])
    new = len(before) + 1

    def die(self: RunFolder, version: int, repository: Path) -> None:
        raise KeyboardInterrupt  # killed in the window

    with monkeypatch.context() as patch:
        patch.setattr(RunFolder, "mark_published", die)
        assert main([*argv, "--checkpoint-dir", str(runs)]) == 130
    assert scan(repository)[name] == [*before, new]
    assert not (runs / name / PUBLISHED).exists()
    run = json.loads((repository / name / str(new) / "run.json").read_text())
    assert run["run_id"] == (runs / name / RUN_ID).read_text()
    capsys.readouterr()
    assert main([*argv, "--checkpoint-dir", str(runs)]) == 0
    assert f"this run already published version {new}" in capsys.readouterr().out
    assert scan(repository)[name] == [*before, new]  # not published twice
    assert json.loads((runs / name / PUBLISHED).read_text())["version"] == new
    assert main([*argv, "--checkpoint-dir", str(tmp_path / "other-runs")]) == 0  # another run
    assert scan(repository)[name] == [*before, new, new + 1]
