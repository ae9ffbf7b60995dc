"""The operations files are consistent: promtool accepts the Prometheus config and rules and
passes the alert unit tests; the compose file, Dockerfiles and Grafana provisioning agree with
each other, with the repository and with the metrics the service documents.

(No docker engine runs here: tests/deploy/test_deploy_e2e.py runs the dashboard's and the alerts'
queries against a real Prometheus scraping a real nnserve.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.support.deploy import (
    ALERTS,
    ALERTS_TEST,
    COMPOSE,
    DASHBOARD,
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    DOCKERFILE,
    DOCKERFILE_TRAIN,
    FOREIGN_METRICS,
    PROMETHEUS_CONFIG,
    alert_rules,
    base_metric,
    dashboard,
    documented_metrics,
    load_yaml,
    metric_names,
    panel_queries,
    panels,
    parse_label_values,
    require_tool,
    variable_queries,
)
from tests.support.paths import ROOT

ALERT_NAMES = {
    "NnserveDown",
    "NnserveNoModelReady",
    "NnserveModelLoadFailed",
    "NnserveHighErrorRatio",
    "NnserveInternalErrors",
    "NnserveHighLatencyP99",
    "NnserveShedding",
    "NnserveQueueBacklog",
    "NnservePredictionLogDropping",
    "NnservePredictionLogNearBound",
    "NnserveInputDrift",
    "NnserveLiveAccuracyLow",
    "NnserveForecastErrorHigh",
}
SERVICE_UID = "10001"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- Prometheus ------------------------------------------------------------------------------
def test_promtool_accepts_the_config_and_its_rule_file() -> None:
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(ALERT_NAMES)} rules found" in result.stdout + result.stderr


def test_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_unit_tests_fire_and_stay_silent_for_every_alert() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for case in load_yaml(ALERTS_TEST)["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else silent).add(check["alertname"])
    assert load_yaml(ALERTS_TEST)["rule_files"] == [ALERTS.name]
    assert fired == ALERT_NAMES
    assert silent == ALERT_NAMES


def test_the_alerts_an_operator_needs_are_there() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(rules) == ALERT_NAMES
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    expr = {name: " ".join(rule["expr"].split()) for name, rule in rules.items()}
    assert expr["NnserveDown"] == 'up{job="nnserve"} == 0'
    assert "nnserve_models_loaded{" in expr["NnserveNoModelReady"]
    assert "== 0" in expr["NnserveNoModelReady"] and "absent(" in expr["NnserveNoModelReady"]
    assert "increase(nnserve_model_load_failures_total" in expr["NnserveModelLoadFailed"]
    assert 'code=~"5.."' in expr["NnserveHighErrorRatio"]
    assert "histogram_quantile(0.99," in expr["NnserveHighLatencyP99"]
    assert "nnserve_request_duration_seconds_bucket" in expr["NnserveHighLatencyP99"]
    assert 'code="503"' in expr["NnserveShedding"]
    assert "nnserve_queue_depth" in expr["NnserveQueueBacklog"]
    assert "rate(nnserve_prediction_log_dropped_total" in expr["NnservePredictionLogDropping"]
    assert expr["NnservePredictionLogDropping"].endswith("> 0")
    near = expr["NnservePredictionLogNearBound"]
    assert "nnserve_prediction_log_bytes{" in near and 'kind="bytes"' in near
    assert near.endswith("> 0.8")
    assert expr["NnserveInputDrift"].startswith("max by (job, instance, model, version)")
    assert "nnserve_input_drift_psi{" in expr["NnserveInputDrift"]
    assert (
        expr["NnserveInputDrift"].endswith("> 0.25") and rules["NnserveInputDrift"]["for"] == "30m"
    )
    accuracy = expr["NnserveLiveAccuracyLow"]
    assert "nnserve_live_accuracy{" in accuracy and "< 0.8" in accuracy
    assert (
        " and " in accuracy and "nnserve_live_accuracy_window{" in accuracy and ">= 50" in accuracy
    )


def test_alerts_select_only_documented_metrics() -> None:
    documented = documented_metrics()
    assert len(documented) >= 14
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            assert base_metric(name) in documented or name in FOREIGN_METRICS, (rule["alert"], name)


def test_prometheus_scrapes_nnserve_and_itself() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == [ALERTS.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"nnserve", "prometheus"}
    nnserve = jobs["nnserve"]
    assert nnserve.get("metrics_path", "/metrics") == "/metrics"
    assert nnserve["static_configs"] == [{"targets": ["nnserve:8000"]}]
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["localhost:9090"]}]


# -- docker compose --------------------------------------------------------------------------
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (a named volume, or a host path starting with '.')."""
    found: dict[str, str] = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        found[target] = source
    return found


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The repository file a container path is bind-mounted from."""
    path = PurePosixPath(container_path)
    for target, source in mounts(service).items():
        if source.startswith(".") and path.is_relative_to(target):
            return ROOT / source / path.relative_to(target)
    raise AssertionError(f"{container_path} is not bind-mounted")


def published(service: dict[str, Any]) -> dict[int, str]:
    """Container port -> "host_ip:host_port" (host_ip may be empty)."""
    ports: dict[int, str] = {}
    for port in service["ports"]:
        *host, container = str(port).split(":")
        ports[int(container)] = ":".join(host)
    return ports


def test_compose_has_the_four_services_with_health_checks_and_restart_policies() -> None:
    services = compose()["services"]
    assert set(services) == {"nnserve", "prometheus", "grafana", "trainer"}
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        assert test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, name
        assert service["restart"] in {"no", "always", "unless-stopped", "on-failure"}, name
    assert services["nnserve"]["restart"] == "unless-stopped"
    assert services["trainer"]["restart"] == "no"  # a batch job
    assert "/v2/health/ready" in " ".join(services["nnserve"]["healthcheck"]["test"])


def test_compose_images_are_pinned_to_exact_versions() -> None:
    for name, service in compose()["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: {image}"
    services = compose()["services"]
    assert services["prometheus"]["image"].startswith("prom/prometheus:v3.")
    assert services["grafana"]["image"].startswith("grafana/grafana:12.")


def test_compose_ports_are_the_documented_ones() -> None:
    services = compose()["services"]
    assert published(services["nnserve"]) == {8000: "8000"}
    # no authentication on these two: the host's loopback only
    assert published(services["prometheus"]) == {9090: "127.0.0.1:9090"}
    assert published(services["grafana"]) == {3000: "127.0.0.1:3000"}
    assert "ports" not in services["trainer"]


def test_compose_volumes_exist_and_bind_mounts_point_into_the_repository() -> None:
    spec = compose()
    named = set(spec["volumes"])
    assert named == {"models", "nnserve-data", "prometheus-data", "grafana-data"}
    for name, service in spec["services"].items():
        for target, source in mounts(service).items():
            assert target.startswith("/"), (name, target)
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} is not in the repository"
            else:
                assert source in named, f"{name}: volume {source} is not declared"


def test_nnserve_and_the_trainer_share_the_models_volume() -> None:
    services = compose()["services"]
    nnserve, trainer = services["nnserve"], services["trainer"]
    assert trainer["profiles"] == ["train"]
    assert all("profiles" not in s for n, s in services.items() if n != "trainer")
    assert mounts(nnserve) == {"/models": "models", "/data": "nnserve-data"}
    assert mounts(trainer) == {"/models": "models", "/data": "nnserve-data"}
    assert nnserve["environment"]["NNSERVE_MODEL_REPOSITORY"] == "/models"
    assert nnserve["environment"]["NNSERVE_HOST"] == "0.0.0.0"
    command = trainer["command"]
    assert command[:4] == ["python", "-m", "training", "all"]
    assert command[command.index("--repository") + 1] == "/models"


def test_compose_builds_the_two_dockerfiles() -> None:
    services = compose()["services"]
    assert services["nnserve"]["build"] == {"context": ".", "dockerfile": DOCKERFILE.name}
    assert services["trainer"]["build"] == {"context": ".", "dockerfile": DOCKERFILE_TRAIN.name}


def test_prometheus_container_reads_the_repository_config() -> None:
    prometheus = compose()["services"]["prometheus"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in prometheus["command"])
    assert host_path(prometheus, flags["config.file"]) == PROMETHEUS_CONFIG
    assert mounts(prometheus)[flags["storage.tsdb.path"]] == "prometheus-data"
    assert host_path(prometheus, "/etc/prometheus/alerts.yml") == ALERTS


def test_grafana_is_provisioned_with_anonymous_viewers_and_a_secret_admin_password() -> None:
    grafana = compose()["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=\S+", example, re.M)
    assert host_path(grafana, "/etc/grafana/provisioning/datasources/prometheus.yml") == DATASOURCES
    provider_file = "/etc/grafana/provisioning/dashboards/nnserve.yml"
    assert host_path(grafana, provider_file) == DASHBOARD_PROVIDERS
    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert provider["type"] == "file"
    assert host_path(grafana, provider["options"]["path"] + "/nnserve.json") == DASHBOARD
    assert host_path(grafana, env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]) == DASHBOARD


def test_the_datasource_points_at_the_prometheus_service() -> None:
    (source,) = load_yaml(DATASOURCES)["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert 9090 in published(compose()["services"]["prometheus"])
    assert source["uid"] and source["isDefault"] is True


# -- Dockerfiles -----------------------------------------------------------------------------
def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            found.append((keyword.upper(), " ".join(args.split())))
    return found


def last(path: Path, keyword: str) -> str:
    values = [args for key, args in instructions(path) if key == keyword]
    assert values, f"{path.name} has no {keyword}"
    return values[-1]


def pip_installs(path: Path) -> list[str]:
    runs = " && ".join(args for key, args in instructions(path) if key == "RUN")
    return [args.strip() for args in re.findall(r"pip install ([^&;|]+)", runs)]


@pytest.mark.parametrize("path", [DOCKERFILE, DOCKERFILE_TRAIN], ids=lambda p: p.name)
def test_images_are_slim_python_311_pinned_and_run_as_a_non_root_user(path: Path) -> None:
    bases = [args.split()[0] for key, args in instructions(path) if key == "FROM"]
    assert bases and all(re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", b) for b in bases)
    assert last(path, "USER").split(":")[0] == SERVICE_UID  # the models volume's owner
    assert f"--chown={SERVICE_UID}:{SERVICE_UID} models/ /models/" in [
        args for key, args in instructions(path) if key == "COPY"
    ]
    assert json.loads(last(path, "VOLUME"))[0] == "/models"


def test_the_service_image_has_no_torch_and_serves_with_a_health_check() -> None:
    assert pip_installs(DOCKERFILE) == ["."]
    copied = [args.split()[-2] for key, args in instructions(DOCKERFILE) if key == "COPY"]
    assert "training/" not in copied
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert not [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    env = " ".join(args for key, args in instructions(DOCKERFILE) if key == "ENV")
    assert "NNSERVE_HOST=0.0.0.0" in env.split()
    assert "NNSERVE_MODEL_REPOSITORY=/models" in env.split()
    healthcheck = last(DOCKERFILE, "HEALTHCHECK")
    assert "/v2/health/ready" in healthcheck and "urllib.request" in healthcheck
    assert "curl" not in healthcheck
    assert json.loads(last(DOCKERFILE, "CMD")) == ["python", "-m", "service"]
    assert last(DOCKERFILE, "EXPOSE") == "8000"


def test_the_trainer_image_has_cpu_torch_and_the_train_extra() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (torch_pin,) = [
        d for d in pyproject["project"]["optional-dependencies"]["train"] if "torch" in d
    ]
    assert pip_installs(DOCKERFILE_TRAIN) == [
        f"{torch_pin} --index-url https://download.pytorch.org/whl/cpu",
        '".[train]"',
    ]
    assert json.loads(last(DOCKERFILE_TRAIN, "CMD")) == [
        "python", "-m", "training", "all", "--repository", "/models",
    ]  # fmt: skip
    assert "dataset-fashion-mnist" in " ".join(
        args for key, args in instructions(DOCKERFILE_TRAIN) if key == "RUN"
    )


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "**/__pycache__", ".pytest_cache", ".mypy_cache"} <= ignored
    assert ".env" in ignored  # secrets stay out of images
    needed = {"models", "service", "modelrepo", "training", "pyproject.toml", "README.md"}
    assert not needed & ignored


# -- Grafana dashboard -----------------------------------------------------------------------
MODEL_LABELLED = {name for name, labels in documented_metrics().items() if "model" in labels}
VERSION_LABELLED = {name for name, labels in documented_metrics().items() if "version" in labels}


def test_dashboard_identity_and_datasource() -> None:
    board = dashboard()
    assert board["title"] == "nnserve" and board["uid"] == "nnserve"
    (source,) = load_yaml(DATASOURCES)["datasources"]
    references = [p["datasource"] for p in panels(board)]
    references += [t["datasource"] for p in panels(board) for t in p.get("targets", [])]
    references += [v["datasource"] for v in board["templating"]["list"]]
    assert references
    assert all(ref == {"type": "prometheus", "uid": source["uid"]} for ref in references)


def test_dashboard_template_variables_come_from_model_info() -> None:
    queries = variable_queries(dashboard())
    assert set(queries) == {"model", "version"}
    assert parse_label_values(queries["model"]) == ('nnserve_model_info{job="nnserve"}', "model")
    assert parse_label_values(queries["version"]) == (
        'nnserve_model_info{job="nnserve", model=~"$model"}',
        "version",
    )


def test_dashboard_queries_filter_by_the_template_variables() -> None:
    queries = panel_queries(dashboard())
    assert len(queries) >= 20
    for query in queries:
        names = {base_metric(n) for n in metric_names(query.expr)}
        assert names, query
        if names & MODEL_LABELLED and 'model=""' not in query.expr:
            assert 'model=~"$model"' in query.expr, query
        if names & VERSION_LABELLED and 'model=""' not in query.expr:
            assert 'version=~"$version"' in query.expr, query
        if names - MODEL_LABELLED - {"ALERTS"}:
            assert 'job="nnserve"' in query.expr, query  # not Prometheus' own process


def test_dashboard_shows_every_documented_metric_and_only_those() -> None:
    used = {base_metric(n) for q in panel_queries(dashboard()) for n in metric_names(q.expr)}
    documented = set(documented_metrics())
    assert documented <= used
    assert used - documented <= FOREIGN_METRICS


def test_dashboard_has_the_panels_an_operator_needs() -> None:
    titles = {p["title"] for p in panels(dashboard())}
    for needed in (
        "Request rate by model, version and status code",
        "Error ratio (5xx and 4xx)",
        "Request latency p50 / p95 / p99",
        "Queue time vs inference time",
        "Mean batch size",
        "Batch size distribution",
        "In-flight requests and queue depth",
        "Models loaded",
        "Serving versions and provenance",
        "Model load failures by reason",
        "Predictions by class",
        "Live accuracy by model and version",
        "Feedback rate by outcome",
        "Input drift PSI (top 15 features)",
        "Prediction log written vs dropped",
        "Prediction log size vs its bound",
        "Prediction log rows, pruning and oldest age",
        "Process CPU",
        "Process memory",
    ):
        assert needed in titles
    latency = next(q for q in panel_queries(dashboard()) if q.panel.startswith("Request latency"))
    assert "nnserve_request_duration_seconds_bucket" in latency.expr


def test_dashboard_model_quality_row_reads_accuracy_feedback_drift_and_the_log() -> None:
    board = dashboard()
    assert "Model quality" in [p["title"] for p in board["panels"] if p["type"] == "row"]
    by_title = {p["title"]: p for p in panels(board)}
    exprs: dict[str, set[str]] = {}
    for query in panel_queries(board):
        exprs.setdefault(query.panel, set()).update(metric_names(query.expr))
    assert exprs["Live accuracy by model and version"] == {
        "nnserve_live_accuracy",
        "nnserve_live_accuracy_window",
    }
    assert exprs["Feedback rate by outcome"] == {"nnserve_feedback_total"}
    assert exprs["Prediction log written vs dropped"] == {
        "nnserve_prediction_log_written_total",
        "nnserve_prediction_log_dropped_total",
    }
    drift = by_title["Input drift PSI (top 15 features)"]
    (target,) = drift["targets"]
    assert target["expr"].startswith("topk(15, max by (model, version, feature) (")
    assert target["instant"] is True
    steps = drift["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [step["value"] for step in steps] == [None, 0.1, 0.25]


def test_dashboard_layout_has_unique_ids_and_no_overlapping_panels() -> None:
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_dashboard_is_the_file_grafana_loads() -> None:
    assert DASHBOARD.suffix == ".json" and json.loads(DASHBOARD.read_text())["panels"]


@pytest.mark.parametrize(
    ("dockerfile", "entry"),
    [
        (DOCKERFILE, "import service.app, service.__main__"),
        (DOCKERFILE_TRAIN, "import training.cli, training.retrain, training.pipeline"),
    ],
)
def test_each_image_copies_every_package_its_code_imports(dockerfile: Path, entry: str) -> None:
    """A first-party package the image lacks would only fail when the container starts."""
    code = f"import sys; {entry}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    first_party = {m for m in done.stdout.split() if (ROOT / m / "__init__.py").is_file()}
    copied = set(re.findall(r"^COPY\s+(?:--\S+\s+)*(\w+)/\s", dockerfile.read_text(), re.M))
    assert first_party, done.stdout
    assert first_party <= copied, f"{dockerfile.name} lacks {sorted(first_party - copied)}"


def test_the_service_image_keeps_its_prediction_log_on_a_volume() -> None:
    text = DOCKERFILE.read_text()
    assert "NNSERVE_DATA_DIR=/data" in text and "install -d -o 10001 -g 10001 /data" in text
    nnserve = compose()["services"]["nnserve"]
    assert nnserve["environment"]["NNSERVE_DATA_DIR"] == "/data"
    assert mounts(nnserve)["/data"] == "nnserve-data"
    assert mounts(compose()["services"]["trainer"])["/data"] == "nnserve-data"
