"""Feedback, prediction log and champion/challenger retraining, end to end on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelrepo import scan
from predictionlog import open_store
from tests.support.metrics_text import parse, value
from tests.support.paths import ROOT
from tests.support.repo_tools import copy_models
from tests.support.server import Server, running_server, writer_pid

MODEL = "breast-cancer-ann"


def known_rows() -> tuple[np.ndarray, list[str]]:
    """Rows of the training split and their labels: the held-out test split stays unseen."""
    from training.data import load_breast_cancer

    data = load_breast_cancer()
    return data.x_train, [data.labels[i] for i in data.y_train]


def predict(server: Server, rows: np.ndarray) -> list[dict[str, object]]:
    out = []
    with httpx.Client(base_url=server.url) as http:
        for row in rows:
            r = http.post(f"/v1/models/{MODEL}:predict", json={"instances": [row.tolist()]})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["id"] == r.headers["x-request-id"] == body["predictions"][0]["id"]
            out.append(body)
    return out


def retrain(root: Path, store: str, reports: Path, *args: str) -> tuple[dict[str, object], str]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "retrain",
            MODEL,
            "--repository",
            str(root),
            "--feedback-env",  # as the Kubernetes CronJob passes it: no URL on the command line
            "NNSERVE_PREDICTION_LOG_URL",
            "--report-dir",
            str(reports),
            *args,
        ],
        cwd=ROOT,
        env={**os.environ, "NNSERVE_PREDICTION_LOG_URL": store},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    newest = max(reports.glob("retrain-*.json"), key=lambda p: p.stat().st_mtime_ns)
    assert newest.with_suffix(".md").is_file()
    return json.loads(newest.read_text()), newest.with_suffix(".md").read_text()


@pytest.mark.slow
def test_feedback_then_retrain_publishes_and_the_server_picks_it_up(tmp_path: Path) -> None:
    root = copy_models(tmp_path, MODEL)
    data = tmp_path / "data"
    store_url = f"sqlite:///{data / 'predictions.db'}"
    x, truth = known_rows()
    with running_server(
        root, tmp_path, NNSERVE_DATA_DIR=str(data), NNSERVE_POLL_INTERVAL="0.3"
    ) as server:
        answers = predict(server, x[:80])
        ids = [str(a["id"]) for a in answers]
        feedback = [{"id": i, "label": t} for i, t in zip(ids, truth[:80], strict=True)]
        url = f"{server.url}/v1/models/{MODEL}/feedback"
        r = httpx.post(url, json=feedback)
        assert r.json() == {"recorded": 80, "duplicates": 0}, r.text
        assert httpx.post(url, json=feedback[0]).json() == {"recorded": 0, "duplicates": 1}
        other = "benign" if truth[0] == "malignant" else "malignant"
        conflict = httpx.post(url, json={"id": ids[0], "label": other})
        assert conflict.status_code == 409 and "different label" in conflict.json()["error"]
        unknown = httpx.post(url, json={"id": "no-such-id", "label": "benign"})
        assert unknown.status_code == 404 and "unknown prediction id" in unknown.json()["error"]
        bad_label = httpx.post(url, json={"id": ids[1], "label": "maybe"})
        assert bad_label.status_code == 400 and "unknown label 'maybe'" in bad_label.json()["error"]
        assert httpx.post(url, json={"id": ids[1]}).status_code == 400
        assert (
            httpx.post(f"{server.url}/v1/models/nope/feedback", json=feedback[0]).status_code == 404
        )

        metrics = parse(httpx.get(f"{server.url}/metrics").text)
        predicted = [a["predictions"][0]["label"] for a in answers]  # type: ignore[index]
        correct = sum(p == t for p, t in zip(predicted, truth[:80], strict=True))
        mv = {"model": MODEL, "version": "1"}
        assert value(metrics, "nnserve_live_accuracy", **mv) == pytest.approx(correct / 80)
        assert value(metrics, "nnserve_feedback_total", outcome="correct", **mv) == correct
        assert value(metrics, "nnserve_prediction_log_written_total") == 80
        assert value(metrics, "nnserve_prediction_log_dropped_total") == 0
        psi = [v for (name, labels), v in metrics.items() if name == "nnserve_input_drift_psi"]
        assert len(psi) == 30 and all(np.isfinite(psi))

        report, markdown = retrain(root, store_url, tmp_path / "reports", "--tolerance", "0.05")
        assert report["decision"] == "published" and report["version"] == 2
        assert report["feedback"] == {"store": store_url, "examples": 80, "skipped": 0}
        assert "Decision: published" in markdown
        started = time.monotonic()
        while True:
            r = httpx.post(
                f"{server.url}/v1/models/{MODEL}:predict", json={"instances": [x[0].tolist()]}
            )
            if r.json()["model_version"] == "2":
                break
            assert time.monotonic() - started < 0.3 + 5, "version 2 not served in time"
            time.sleep(0.05)

        # a crippled challenger (one epoch at a tiny learning rate) keeps the champion
        report, markdown = retrain(
            root,
            store_url,
            tmp_path / "reports",
            "--tolerance",
            "0",
            "--epochs",
            "1",
            "--lr",
            "1e-6",
        )
        assert report["decision"] == "kept champion" and report["version"] == 2
        champion, challenger = report["champion"], report["challenger"]
        assert challenger["accuracy"] < champion["accuracy"]  # type: ignore[index]
        assert "Decision: kept champion" in markdown
        assert scan(root)[MODEL] == [1, 2]


def test_logged_predictions_survive_sigterm(tmp_path: Path) -> None:
    root = copy_models(tmp_path, MODEL)
    data = tmp_path / "data"
    x, _ = known_rows()
    with running_server(root, tmp_path, NNSERVE_DATA_DIR=str(data)) as server:
        answers = predict(server, np.resize(x, (300, x.shape[1])))
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
    store = open_store(str(data / "predictions.db"))
    try:
        assert store.count_predictions(MODEL) == 300
        stored = store.get_prediction(str(answers[-1]["id"]))
        assert stored is not None and stored.version == 1 and stored.inputs.shape == (30,)
    finally:
        store.close()
    assert "prediction log closed: 300 written, 0 dropped" in server.logs()


def test_sampling_and_the_drop_counter(tmp_path: Path) -> None:
    root = copy_models(tmp_path, MODEL)
    x, _ = known_rows()
    with running_server(root, tmp_path, NNSERVE_PREDICTION_LOG_SAMPLE="0") as server:
        predict(server, x[:5])
        metrics = parse(httpx.get(f"{server.url}/metrics").text)
        assert value(metrics, "nnserve_prediction_log_written_total") == 0
    with running_server(root, tmp_path, NNSERVE_PREDICTION_LOG="false") as server:
        predict(server, x[:2])
        r = httpx.post(f"{server.url}/v1/models/{MODEL}/feedback", json={"id": "x", "label": "y"})
        assert r.status_code == 503 and "prediction log" in r.json()["error"]
    # a writer that falls behind: the loss is counted, never silent, never a request (one
    # worker: whether a response says "not-logged" depends on that worker's own backlog)
    with running_server(
        root, tmp_path, NNSERVE_PREDICTION_LOG_QUEUE="64", NNSERVE_WORKERS="1"
    ) as server:
        writer = writer_pid(server.process.pid)
        os.kill(writer, signal.SIGSTOP)  # stops reading its socket
        try:
            statuses = []
            for _ in range(60):
                r = httpx.post(
                    f"{server.url}/v1/models/{MODEL}:predict",
                    json={"instances": np.resize(x, (32, x.shape[1])).tolist()},
                )
                statuses.append(r.status_code)
            logged = [r.headers["x-prediction-log"]]
        finally:
            os.kill(writer, signal.SIGCONT)
        assert statuses == [200] * 60 and logged == ["not-logged"]
        started = time.monotonic()
        while True:
            metrics = parse(httpx.get(f"{server.url}/metrics").text)
            written = value(metrics, "nnserve_prediction_log_written_total")
            dropped = value(metrics, "nnserve_prediction_log_dropped_total")
            if written + dropped == 60 * 32 or time.monotonic() - started > 10:
                break
            time.sleep(0.05)
        assert dropped > 0 and written > 0 and written + dropped == 60 * 32, (written, dropped)
