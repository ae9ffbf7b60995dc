"""What every benchmark here shares: the committed models' request bodies, the service
started pinned to a core, wrk pinned to the other, and the results' files.

The service runs on core 0 (``SERVER_CORE``, with its prediction-log writer process), the
load generator on core 1 (``CLIENT_CORE``): wrk, a C, event-driven load generator that one
core keeps far ahead of a Python server.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.runtime.model import ServedModel

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SERVER_CORE, CLIENT_CORE = "0", "1"


@dataclass
class Row:
    model: str
    scenario: str  # raw-ort, codec, v1, v2-json, v2-binary
    batch: int
    concurrency: int
    req_s: float
    samples_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    ratio_to_raw: float | None = None
    prediction_log: str = ""  # off / on (service rows)
    dropped: float | None = None  # predictions the log dropped during the run (log on)


def sample_batch(model: ServedModel, n: int) -> np.ndarray:
    """``n`` real test samples (the reference batch from model.json, repeated)."""
    tensor = model.card.reference[0].inputs[0]
    base = np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)
    return np.resize(base, (n, *base.shape[1:])).astype(np.float32)


def bodies(model: ServedModel, batch: np.ndarray) -> dict[str, tuple[bytes, str, str]]:
    """scenario -> (body, content type, Inference-Header-Content-Length)."""
    name = model.input.name
    instances = batch.astype(int) if model.input.min_value is not None else batch
    as_v1 = json.dumps({"instances": instances.tolist()}).encode()
    as_v2 = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "data": batch.ravel().tolist(),
                }
            ]
        }
    ).encode()
    raw = batch.astype("<f4").tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": model.card.outputs[-1].name, "parameters": {"binary_data": True}}],
        }
    ).encode()
    return {
        "v1": (as_v1, "application/json", ""),
        "v2-json": (as_v2, "application/json", ""),
        "v2-binary": (head + raw, "application/octet-stream", str(len(head))),
    }


def path_for(model: str, scenario: str) -> str:
    return f"/v1/models/{model}:predict" if scenario == "v1" else f"/v2/models/{model}/infer"


def start_server(
    repository: Path,
    port: int,
    log: Path,
    prediction_log: bool,
    data: Path | None = None,
    cores: str | None = SERVER_CORE,
    workers: int | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m service`` on ``cores`` (taskset; None: every core), ready when returned."""
    env = {
        "NNSERVE_PREDICTION_LOG": "true" if prediction_log else "false",
        "NNSERVE_DATA_DIR": str(data or log.parent / "data"),
        **os.environ,
        "NNSERVE_PORT": str(port),
        "NNSERVE_HOST": "127.0.0.1",
        "NNSERVE_MODEL_REPOSITORY": str(repository),
        "NNSERVE_LOG_LEVEL": "warning",
        "NNSERVE_POLL_INTERVAL": "0",
        "NNSERVE_INFERENCE_THREADS": "1",
        **({"NNSERVE_WORKERS": str(workers)} if workers else {}),
    }
    pinned = ["taskset", "-c", cores] if cores else []
    process = subprocess.Popen(
        [*pinned, sys.executable, "-m", "service"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the service did not start; see {log}")


def stop(*servers: subprocess.Popen[bytes]) -> None:
    """SIGTERM to each of ``servers`` at once (each drains and flushes its log), then wait."""
    for server in servers:
        server.terminate()
    for server in servers:
        server.wait(timeout=60)


def wrk(
    url: str,
    body_file: Path,
    content_type: str,
    header_length: str,
    concurrency: int,
    seconds: float,
    core: str | None = CLIENT_CORE,
) -> dict[str, float]:
    env = {
        **os.environ,
        "BODY_FILE": str(body_file),
        "CONTENT_TYPE": content_type,
        "HEADER_LENGTH": header_length,
    }
    done = subprocess.run(
        [
            *(["taskset", "-c", core] if core else []),
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(ROOT / "bench" / "post.lua"),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("{"))
    return json.loads(line)  # type: ignore[no-any-return]


def check_answer(url: str, body: bytes, content_type: str, header_length: str) -> None:
    headers = {"Content-Type": content_type}
    if header_length:
        headers["Inference-Header-Content-Length"] = header_length
    r = httpx.post(url, content=body, headers=headers)
    if r.status_code != 200:
        raise SystemExit(f"{url}: {r.status_code} {r.text[:300]}")


def write_csv(rows: Sequence[Any], *paths: Path) -> None:
    """Dataclass rows, one CSV file each path (bench.grpc writes its rows with it too)."""
    for path in paths:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
            writer.writeheader()
            writer.writerows(asdict(r) for r in rows)


def log_total(port: int, counter: str = "dropped") -> float:
    """The service's ``nnserve_prediction_log_<counter>_total`` so far (dropped, pruned)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    line = next(
        x for x in text.splitlines() if x.startswith(f"nnserve_prediction_log_{counter}_total ")
    )
    return float(line.split()[-1])
