"""A real Prometheus (the repository's config and alert rules) scraping a real nnserve on
loopback: every PromQL expression of the Grafana dashboard and of the alert rules is valid,
every dashboard panel shows the traffic and the feedback sent, the template variables select
what they say, the load-failure alert fires for a version the service refused, and the
drift and live-accuracy alerts' expressions hold for the inputs and labels sent."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from modelrepo import CARD_FILE, MODEL_FILE, read_card, scan
from service.keys import digest, new_key
from tests.support import samples
from tests.support.deploy import (
    ALERTS,
    PROMETHEUS_CONFIG,
    alert_rules,
    dashboard,
    panel_queries,
    parse_label_values,
    require_tool,
    variable_queries,
)
from tests.support.paths import MODELS
from tests.support.server import free_port, running_server, stop, wait_until_up

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

NAMES = ("breast-cancer-ann", "fashion-cnn", "vowels-lstm")
BROKEN = "breast-cancer-ann"  # gets a version 2 whose model.onnx does not match its sha256
FEEDBACK_MODEL = "breast-cancer-ann"  # gets feedback for its v1 predictions
FORECASTER = "co2-lstm"  # gets actual values, in pieces, for its forecasts
#: Extra rows of FEEDBACK_MODEL per wave: with the 3 x 2 of the other v1 calls, two waves
#: label more than the 50 predictions NnserveLiveAccuracyLow needs in the window.
FEEDBACK_ROWS = 25
#: Dashboard substitutions Grafana makes that are not template variables.
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
DEADLINE_S = 30.0


def repository_with_a_refused_version(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(MODELS, root, ignore=shutil.ignore_patterns("*.png", "run.json"))
    broken = root / BROKEN / "2"
    shutil.copytree(root / BROKEN / "1", broken)
    card = json.loads((broken / CARD_FILE).read_text())
    card["version"] = 2
    (broken / CARD_FILE).write_text(json.dumps(card))
    with (broken / MODEL_FILE).open("ab") as onnx:
        onnx.write(b"\0")  # the sha256 in model.json no longer matches
    return root


def batch(name: str) -> np.ndarray:
    if name == "breast-cancer-ann":
        return samples.rows(2)
    if name == "fashion-cnn":
        return samples.images(2)
    return np.stack(samples.sequences((9, 9)))


def v2_body(name: str) -> dict[str, Any]:
    data = batch(name)
    input_name = read_card(MODELS / name / "1").inputs[0].name
    return {
        "inputs": [
            {
                "name": input_name,
                "shape": list(data.shape),
                "datatype": "FP32",
                "data": data.ravel().tolist(),
            }
        ]
    }


#: Access control is on, so that its panel has something to show: every call carries this key
#: (and one call has none, the rejected side).
API_KEY = new_key()
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def send_traffic(url: str) -> tuple[int, list[dict[str, Any]]]:
    """Good and bad requests to every model on both protocols; returns how many name a model,
    and FEEDBACK_MODEL's v1 predictions (each with its id, for feedback)."""
    sent = 0
    predictions: list[dict[str, Any]] = []
    assert httpx.get(f"{url}/v2/models/{NAMES[0]}", timeout=20).status_code == 401
    with httpx.Client(base_url=url, timeout=20, headers=AUTH) as client:
        for name in NAMES:
            for _ in range(3):
                r = client.post(
                    f"/v1/models/{name}:predict", json={"instances": batch(name).tolist()}
                )
                assert r.status_code == 200, r.text
                if name == FEEDBACK_MODEL:
                    predictions += r.json()["predictions"]
                r = client.post(f"/v2/models/{name}/infer", json=v2_body(name))
                assert r.status_code == 200, r.text
            assert client.post(f"/v1/models/{name}:predict", content=b"{").status_code == 400
            assert (
                client.post(f"/v2/models/{name}/infer", content=b'{"inputs": [').status_code == 400
            )
            r = client.post(
                f"/v1/models/{name}:explain", json={"instances": batch(name)[:1].tolist()}
            )
            assert r.status_code == 200, r.text  # the explanations panel
            sent += 9
        forecast_feedback(client)
        sent += 1
        r = client.post(
            f"/v1/models/{FEEDBACK_MODEL}:predict",
            json={"instances": samples.rows(FEEDBACK_ROWS).tolist()},
        )
        assert r.status_code == 200, r.text
        predictions += r.json()["predictions"]
        sent += 1
        unknown = client.post("/v1/models/no-such-model:predict", json={"instances": [[1.0]]})
        assert unknown.status_code == 404
        assert (
            client.post("/v2/models/no-such-model/infer", json=v2_body(NAMES[0])).status_code == 404
        )
    return sent, predictions


def forecast_feedback(client: httpx.Client) -> None:
    """A forecast of FORECASTER and its actual values in two pieces (the forecast panel)."""
    reference = read_card(MODELS / FORECASTER / "1").reference[0].inputs[0]
    windows = np.reshape(reference.data, reference.shape)[:2]
    r = client.post(f"/v1/models/{FORECASTER}:predict", json={"instances": windows.tolist()})
    assert r.status_code == 200, r.text
    for ident, forecast in zip(r.json()["ids"], r.json()["forecast"], strict=True):
        for start in (0, 3):
            actuals = [v + 0.5 for v in forecast[start : start + 3]]
            piece = {"id": ident, "actuals": actuals, "start": start}
            answer = client.post(f"/v1/models/{FORECASTER}/feedback", json=piece)
            assert answer.status_code == 200, answer.text


def send_feedback(url: str, predictions: list[dict[str, Any]]) -> int:
    """True labels for the predictions: every other one says the prediction was wrong, so both
    outcomes show and the live accuracy (about 50%) is below NnserveLiveAccuracyLow's 80%."""
    labels = read_card(MODELS / FEEDBACK_MODEL / "1").labels
    items = [
        {
            "id": p["id"],
            "label": p["label"] if i % 2 == 0 else next(x for x in labels if x != p["label"]),
        }
        for i, p in enumerate(predictions)
    ]
    r = httpx.post(
        f"{url}/v1/models/{FEEDBACK_MODEL}/feedback", json=items, timeout=20, headers=AUTH
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"recorded": len(items), "duplicates": 0}
    return len(items)


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=10)

    def api(self, path: str, **params: str) -> Any:
        response = self.client.get(f"/api/v1/{path}", params=params)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for(self, what: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus: {what} not within {DEADLINE_S}s")
            time.sleep(0.2)

    def wait_for_total(self, expr: str, at_least: float) -> None:
        self.wait_for(f"{expr} >= {at_least}", lambda: self.total(expr) >= at_least)

    def total(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0


@contextmanager
def running_prometheus(binary: str, target_port: int, tmp_path: Path) -> Iterator[Prometheus]:
    """The repository's prometheus.yml and alerts.yml, scraping 127.0.0.1 every second."""
    port = free_port()
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / f) for f in config["rule_files"]]
    targets = {"nnserve": f"127.0.0.1:{target_port}", "prometheus": f"127.0.0.1:{port}"}
    for job in config["scrape_configs"]:
        job.update(scrape_interval="1s", scrape_timeout="1s")
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = tmp_path / "prometheus.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}")
    try:
        wait_until_up(process, f"http://127.0.0.1:{port}/-/ready", DEADLINE_S, log)
        yield prometheus
    finally:
        prometheus.client.close()
        stop(process, 15)


def substitute(expr: str, variables: dict[str, str]) -> str:
    for name, value in {**GRAFANA_MACROS, **{f"${k}": v for k, v in variables.items()}}.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown variable left in {expr}"
    return expr


def finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def test_dashboard_and_alert_queries_against_a_real_prometheus(tmp_path: Path) -> None:
    binary = require_tool("prometheus")
    started = time.monotonic()
    repository = repository_with_a_refused_version(tmp_path)
    with (
        running_server(
            repository,
            tmp_path,
            NNSERVE_WORKERS="2",
            NNSERVE_API_KEYS=f"e2e:{digest(API_KEY.encode()).hex()}",
        ) as server,
        running_prometheus(binary, server.port, tmp_path) as prometheus,
    ):
        prometheus.wait_for(
            "a first scrape of nnserve", lambda: prometheus.total('up{job="nnserve"}') == 1
        )
        # Two waves, each seen by a scrape, so every rate() has an increase to show; feedback
        # for FEEDBACK_MODEL's v1 predictions of each wave.
        model_requests = 'sum(nnserve_requests_total{job="nnserve", model!=""})'
        feedback = 'sum(nnserve_feedback_total{job="nnserve"})'
        sent = labelled = 0
        for _wave in range(2):
            wave, predictions = send_traffic(server.url)
            sent += wave
            labelled += send_feedback(server.url, predictions)
            prometheus.wait_for_total(model_requests, at_least=sent)
            prometheus.wait_for_total(feedback, at_least=labelled)
        # Feedback flushed the prediction log: the drift of every logged input feature shows.
        features = len(read_card(MODELS / FEEDBACK_MODEL / "1").baseline)
        prometheus.wait_for_total(
            f'count(nnserve_input_drift_psi{{job="nnserve", model="{FEEDBACK_MODEL}"}})',
            at_least=features,
        )
        prometheus.wait_for(
            "the NnserveModelLoadFailed alert",
            lambda: any(
                a["labels"]["alertname"] == "NnserveModelLoadFailed" and a["state"] == "firing"
                for a in prometheus.api("alerts")["alerts"]
            ),
        )

        # The template variables' own queries, as Grafana runs them.
        variables = variable_queries(dashboard())
        selector, label = parse_label_values(variables["model"])
        assert sorted(prometheus.api(f"label/{label}/values", **{"match[]": selector})) == sorted(
            scan(repository)
        )
        selector, label = parse_label_values(substitute(variables["version"], {"model": BROKEN}))
        assert prometheus.api(f"label/{label}/values", **{"match[]": selector}) == ["1"]

        # Every dashboard query, for all models and for one model and version.
        # (forecast panels: for a forecaster; the others for BROKEN)
        everything = {"model": ".+", "version": ".+"}
        for chosen in (
            everything,
            {"model": BROKEN, "version": "1"},
            {"model": FORECASTER, "version": "1"},
        ):
            for query in panel_queries(dashboard()):
                if chosen != everything and query.panel.startswith("Forecast") != (
                    chosen["model"] == FORECASTER
                ):
                    continue
                result = prometheus.query(substitute(query.expr, chosen))
                assert finite(result), f"{query} with {chosen} shows nothing: {result}"
                if chosen != everything:
                    one = chosen["model"]
                    models = {s["metric"].get("model", one) for s in result}
                    assert models == {one}, f"{query} ignores $model: {models}"
                    versions = {s["metric"].get("version", "1") for s in result}
                    assert versions == {"1"}, f"{query} ignores $version: {versions}"
        rate_by_code = next(
            q for q in panel_queries(dashboard()) if q.panel.startswith("Request rate by")
        )
        series = prometheus.query(substitute(rate_by_code.expr, {"model": ".+", "version": ".+"}))
        assert {(s["metric"]["model"], s["metric"]["code"]) for s in series} == {
            (name, code) for name in NAMES for code in ("200", "400")
        } | {(FORECASTER, "200")}
        feedback_rate = next(
            q for q in panel_queries(dashboard()) if q.panel.startswith("Feedback")
        )
        series = prometheus.query(substitute(feedback_rate.expr, {"model": ".+", "version": ".+"}))
        assert {
            (s["metric"]["model"], s["metric"]["outcome"])
            for s in series
            if float(s["value"][1]) > 0
        } == {(FEEDBACK_MODEL, "correct"), (FEEDBACK_MODEL, "incorrect"), (FORECASTER, "actual")}

        # Every alert expression is valid PromQL; the ones about this state say what they should.
        rules_by_name = {rule["alert"]: rule for rule in alert_rules()}
        alerting = {
            rule["alert"]: bool(prometheus.query(" ".join(rule["expr"].split())))
            for rule in alert_rules()
        }
        assert alerting["NnserveModelLoadFailed"]
        assert not alerting["NnserveDown"]
        assert not alerting["NnserveNoModelReady"]
        assert not alerting["NnserveInternalErrors"]
        assert not alerting["NnservePredictionLogDropping"]
        assert prometheus.total('sum(nnserve_prediction_log_dropped_total{job="nnserve"})') == 0
        # The same few reference rows over and over are nothing like the training split ...
        drifting = prometheus.query(" ".join(rules_by_name["NnserveInputDrift"]["expr"].split()))
        assert FEEDBACK_MODEL in {s["metric"]["model"] for s in drifting}
        # ... and every other label said the prediction was wrong, over more than 50 labels.
        (low,) = prometheus.query(" ".join(rules_by_name["NnserveLiveAccuracyLow"]["expr"].split()))
        assert (low["metric"]["model"], low["metric"]["version"]) == (FEEDBACK_MODEL, "1")
        assert 0.4 < float(low["value"][1]) < 0.6
        (failure,) = prometheus.query(
            'nnserve_model_load_failures_total{job="nnserve"} > 0'
        )  # exactly one refused version, for the reason the README names
        assert failure["metric"]["model"] == BROKEN
        assert failure["metric"]["reason"] == "sha256_mismatch"

        # Prometheus itself evaluated every rule of alerts.yml without an error.
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
        assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
        assert str(ALERTS) in {g["file"] for g in prometheus.api("rules")["groups"]}
    assert time.monotonic() - started < 60
