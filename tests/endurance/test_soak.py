"""A soak: mixed traffic on all three models from a few client threads while a new version
is published every ~10 s, with the memory of every process of the service sampled every
second. No unexpected status, no process lost, and no memory growth after warm-up beyond
the bound stated here and in README ("Endurance and fault tests").

``NNSERVE_SOAK_SECONDS`` sets its length (60 in ``make test``; ``make soak DURATION=600``)."""

from __future__ import annotations

import itertools
import json
import os
import random
import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.endurance.tools import process_tree, rss_bytes, wait_for
from tests.support import samples
from tests.support.repo_tools import copy_models, publish_copy
from tests.support.server import running_server

SOAK_S = float(os.environ.get("NNSERVE_SOAK_SECONDS", "60"))
WARM_UP_S = min(20.0, max(10.0, SOAK_S / 5))  # memory before this is not held against it
SWAP_EVERY_S = 10.0
CLIENTS = 3
#: the bound: the service's total RSS (every process) at the end may exceed the warmed-up
#: total by at most 10 % + 20 MiB
GROWTH_SHARE, GROWTH_BYTES = 0.10, 20 << 20
MIB = 1 << 20

pytestmark = [
    pytest.mark.endurance,
    pytest.mark.server,
    pytest.mark.timeout(int(SOAK_S) + 180),
]
MODELS_ = ("breast-cancer-ann", "fashion-cnn", "vowels-lstm")
LABELS = {"breast-cancer-ann": "benign", "fashion-cnn": "Bag", "vowels-lstm": "speaker-1"}
OTHER = {"breast-cancer-ann": "malignant", "fashion-cnn": "Coat", "vowels-lstm": "speaker-2"}


def batch(model: str, rng: random.Random) -> np.ndarray:
    seed = rng.randrange(1000)
    if model == "breast-cancer-ann":
        return samples.rows(rng.randint(1, 4), seed)
    if model == "fashion-cnn":
        return samples.images(rng.randint(1, 2), seed)
    return np.stack(samples.sequences((rng.randint(5, 20),) * rng.randint(1, 2), seed))


def v1_instances(model: str, data: np.ndarray) -> list[object]:
    return (data.astype(int) if model == "fashion-cnn" else data).tolist()  # type: ignore[no-any-return]


class Traffic:
    """One client thread's requests: each kind says which statuses are expected."""

    def __init__(self, url: str, seed: int) -> None:
        self.url = url
        self.rng = random.Random(seed)
        self.http = httpx.Client(timeout=60)
        self.recent: dict[str, deque[str]] = {m: deque(maxlen=50) for m in MODELS_}
        self.labelled: dict[str, deque[str]] = {m: deque(maxlen=50) for m in MODELS_}
        self.next_unknown = 0.0
        self.kinds: list[tuple[Callable[[str], tuple[str, httpx.Response, set[int]]], int]] = [
            (self.v1, 30), (self.v2_json, 20), (self.v2_binary, 20), (self.bad_v1, 6),
            (self.bad_v2, 6), (self.unknown_model, 4), (self.feedback, 12),
            (self.feedback_again, 3), (self.unknown_feedback, 1),
        ]  # fmt: skip

    def one(self) -> tuple[str, httpx.Response, set[int]]:
        kinds, weights = zip(*self.kinds, strict=True)
        kind = self.rng.choices(kinds, weights)[0]
        return kind(self.rng.choice(MODELS_))

    def v1(self, model: str) -> tuple[str, httpx.Response, set[int]]:
        r = self.http.post(
            f"{self.url}/v1/models/{model}:predict",
            json={"instances": v1_instances(model, batch(model, self.rng))},
        )
        if r.status_code == 200:
            self.recent[model].extend(p["id"] for p in r.json()["predictions"])
        return "v1", r, {200}

    def v2_json(self, model: str) -> tuple[str, httpx.Response, set[int]]:
        data = batch(model, self.rng)
        tensor = {"name": samples.INPUTS[model], "shape": list(data.shape), "datatype": "FP32"}
        r = self.http.post(
            f"{self.url}/v2/models/{model}/infer",
            json={"inputs": [{**tensor, "data": data.ravel().tolist()}]},
        )
        return "v2-json", r, {200}

    def v2_binary(self, model: str) -> tuple[str, httpx.Response, set[int]]:
        data = batch(model, self.rng).astype("<f4")
        raw = data.tobytes()
        head = json.dumps(
            {
                "inputs": [
                    {"name": samples.INPUTS[model], "shape": list(data.shape),
                     "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()  # fmt: skip
        cut = self.rng.random() < 0.1  # an inconsistent binary length: 400
        r = self.http.post(
            f"{self.url}/v2/models/{model}/infer",
            content=head + (raw[:-4] if cut else raw),
            headers={
                "Inference-Header-Content-Length": str(len(head)),
                "Content-Type": "application/octet-stream",
            },
        )
        return "v2-binary", r, {400} if cut else {200}

    def bad_v1(self, model: str) -> tuple[str, httpx.Response, set[int]]:
        bad = self.rng.choice(
            [{"instances": [[1.0, 2.0]]}, {"instances": "x"}, {"nothing": 1}, {"instances": []}]
        )
        return "bad", self.http.post(f"{self.url}/v1/models/{model}:predict", json=bad), {400}

    def bad_v2(self, model: str) -> tuple[str, httpx.Response, set[int]]:
        tensor = {"name": samples.INPUTS[model], "shape": [1, 3], "datatype": "BOOL",
                  "data": [True, False, True]}  # fmt: skip
        r = self.http.post(f"{self.url}/v2/models/{model}/infer", json={"inputs": [tensor]})
        return "bad", r, {400}

    def unknown_model(self, model: str) -> tuple[str, httpx.Response, set[int]]:
        if self.rng.random() < 0.5:
            r = self.http.post(f"{self.url}/v1/models/no-such-model:predict", json={})
        else:
            r = self.http.post(f"{self.url}/v2/models/{model}/versions/999/infer", json={})
        return "unknown", r, {404}

    def feedback(self, model: str) -> tuple[str, httpx.Response, set[int]]:
        if not self.recent[model]:
            return self.v1(model)
        id = self.recent[model].popleft()
        r = self.http.post(
            f"{self.url}/v1/models/{model}/feedback", json={"id": id, "label": LABELS[model]}
        )
        if r.status_code == 200:
            self.labelled[model].append(id)
        return "feedback", r, {200}

    def feedback_again(self, model: str) -> tuple[str, httpx.Response, set[int]]:
        """The same label again (a duplicate, 200) or another one (a conflict, 409)."""
        if not self.labelled[model]:
            return self.feedback(model)
        id = self.labelled[model][-1]
        same = self.rng.random() < 0.5
        r = self.http.post(
            f"{self.url}/v1/models/{model}/feedback",
            json={"id": id, "label": LABELS[model] if same else OTHER[model]},
        )
        return "feedback", r, {200} if same else {409}

    def unknown_feedback(self, model: str) -> tuple[str, httpx.Response, set[int]]:
        """At most one per 10 s per client: the service looks for an unknown id for 2 s."""
        if time.monotonic() < self.next_unknown:
            return self.feedback(model)
        self.next_unknown = time.monotonic() + 10.0
        r = self.http.post(
            f"{self.url}/v1/models/{model}/feedback",
            json={"id": f"never-logged-{self.rng.random()}", "label": LABELS[model]},
        )
        return "feedback", r, {404}


def test_soak_mixed_traffic_with_swaps_memory_stays_bounded(tmp_path: Path) -> None:
    root = copy_models(tmp_path)
    counts: Counter[tuple[str, int]] = Counter()
    unexpected: list[str] = []
    memory: list[tuple[float, int, dict[int, int]]] = []  # (seconds, total RSS, per process)
    published: list[tuple[str, int]] = []
    slowest: list[tuple[float, str, int]] = []  # (seconds, kind, status): the three slowest
    stop = threading.Event()

    with running_server(
        root, tmp_path, NNSERVE_WORKERS="2", NNSERVE_POLL_INTERVAL="0.5",
        NNSERVE_LOG_LEVEL="warning", NNSERVE_PREDICTION_LOG_MAX_BYTES=str(64 << 20),
    ) as server:  # fmt: skip
        pids = process_tree(server.process.pid)
        started = time.monotonic()

        def client(seed: int) -> None:
            traffic = Traffic(server.url, seed)
            with traffic.http:
                while not stop.is_set():
                    begun = time.monotonic()
                    try:
                        kind, r, expected = traffic.one()
                    except httpx.HTTPError as exc:  # a timeout, a connection lost
                        unexpected.append(f"{type(exc).__name__}: {exc}")
                        return
                    took = time.monotonic() - begun
                    slowest.append((took, kind, r.status_code))
                    slowest.sort(reverse=True)
                    del slowest[3:]
                    counts[(kind, r.status_code)] += 1
                    if r.status_code not in expected and len(unexpected) < 20:
                        unexpected.append(f"{kind} {r.request.url} {r.status_code} {r.text[:200]}")

        def swapper() -> None:
            for model in itertools.cycle(MODELS_):
                if stop.wait(SWAP_EVERY_S):
                    return
                published.append((model, publish_copy(root, model)))

        def sampler() -> None:
            while not stop.wait(1.0):
                tree = process_tree(server.process.pid)
                per = {pid: rss_bytes(pid) for pid in tree}
                memory.append((time.monotonic() - started, sum(per.values()), per))

        threads = [threading.Thread(target=client, args=(seed,)) for seed in range(CLIENTS)]
        threads += [threading.Thread(target=swapper), threading.Thread(target=sampler)]
        for thread in threads:
            thread.start()
        try:
            while time.monotonic() - started < SOAK_S and not unexpected:
                time.sleep(0.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join(90)
        newest = dict(published)  # the last version published of each model

        def serving() -> dict[str, list[str]]:
            return {m: httpx.get(f"{server.url}/v2/models/{m}").json()["versions"] for m in MODELS_}

        # the last one may have been published a moment ago: poll interval + load time
        wait_for(lambda: all(serving()[m] == [str(v)] for m, v in newest.items()), 15)
        served = serving()
        pids_after = process_tree(server.process.pid)

    assert not unexpected, unexpected
    warm = [total for t, total, _ in memory if WARM_UP_S <= t < WARM_UP_S + 5]
    end = [total for _, total, _ in memory[-5:]]
    warmed, last, peak = (
        statistics.median(warm),
        statistics.median(end),
        max(total for t, total, _ in memory if t >= WARM_UP_S),
    )
    bound = warmed * (1 + GROWTH_SHARE) + GROWTH_BYTES
    by_status, by_kind = Counter[int](), Counter[str]()
    for (kind, status), n in counts.items():
        by_status[status] += n
        by_kind[kind] += n
    print(
        f"\nsoak {SOAK_S:.0f}s, {CLIENTS} clients, {sum(counts.values())} requests by status"
        f" {dict(sorted(by_status.items()))}; by kind"
        f" {dict(sorted(by_kind.items()))};"
        f" {len(published)} versions published, serving {served}; slowest"
        f" {[(round(s, 2), k, c) for s, k, c in slowest]}\n"
        f"RSS of {len(pids)} processes: first {memory[0][1] / MIB:.0f} MiB, warmed"
        f" {warmed / MIB:.0f} MiB (at {WARM_UP_S:.0f}s), last {last / MIB:.0f} MiB, max"
        f" {peak / MIB:.0f} MiB, bound {bound / MIB:.0f} MiB; per process at the end"
        f" {[round(v / MIB) for v in memory[-1][2].values()]} MiB"
    )
    assert sorted(pids_after) == sorted(pids), "a process of the service died and was replaced"
    assert by_status[200] > 10 * SOAK_S, by_status  # it did serve all along
    assert {400, 404, 409} <= by_status.keys()
    assert len(published) >= int(SOAK_S / SWAP_EVERY_S) - 1
    assert last <= bound, f"RSS grew from {warmed / MIB:.0f} to {last / MIB:.0f} MiB"
