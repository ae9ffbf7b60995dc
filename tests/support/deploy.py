"""The operations files (compose, Prometheus, Grafana) and their PromQL, for the deploy tests."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.paths import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERFILE_TRAIN = ROOT / "Dockerfile.train"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "nnserve.yml"
DASHBOARD = GRAFANA_DIR / "dashboards" / "nnserve.json"

#: Metric names that are not the service's own but may appear in queries.
FOREIGN_METRICS = {"up", "ALERTS", "process_cpu_seconds_total", "process_resident_memory_bytes"}


def require_tool(name: str) -> str:
    """The path of a Prometheus tool; skip without it locally, fail in CI (CI is set)."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} not found: apt-get install prometheus (scripts/system-packages.sh does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included, rows themselves excluded."""
    found: list[dict[str, Any]] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str


def panel_queries(board: dict[str, Any]) -> list[PanelQuery]:
    return [
        PanelQuery(panel["title"], target["refId"], target["expr"])
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]


def variable_queries(board: dict[str, Any]) -> dict[str, str]:
    """Template variable name -> its query (``label_values(selector, label)``)."""
    queries: dict[str, str] = {}
    for variable in board["templating"]["list"]:
        query = variable["query"]
        queries[variable["name"]] = query["query"] if isinstance(query, dict) else query
    return queries


_LABEL_VALUES = re.compile(r"label_values\((?P<selector>.+),\s*(?P<label>\w+)\)")


def parse_label_values(query: str) -> tuple[str, str]:
    """``label_values(selector, label)`` -> (selector, label)."""
    match = _LABEL_VALUES.fullmatch(query.strip())
    assert match, f"not a label_values() query: {query!r}"
    return match["selector"], match["label"]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def documented_metrics() -> dict[str, str]:
    """README's "Metrics" table: metric name -> its labels column."""
    rows = re.findall(
        r"^\| `(nnserve_\w+)` \| [^|]+ \| ([^|]+) \|", (ROOT / "README.md").read_text(), re.M
    )
    return {name: labels.strip() for name, labels in rows}


_IDENTIFIER = re.compile(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*")
_NOT_METRICS = re.compile(
    r"\{[^}]*\}|\"[^\"]*\"|\[[^\]]*\]|\b(?:by|without|on|ignoring)\s*\([^)]*\)"
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions and keywords left out)."""
    bare = _NOT_METRICS.sub(" ", expr)
    names = set()
    for match in _IDENTIFIER.finditer(bare):
        rest = bare[match.end() :].lstrip()
        if rest.startswith("("):
            continue  # a function or aggregation
        names.add(match.group())
    keywords = {"or", "and", "unless", "offset", "bool", "le", "inf", "nan"}
    return {n for n in names if n.lower() not in keywords}


def base_metric(name: str) -> str:
    """A histogram's series name -> its family (``_bucket``/``_sum``/``_count`` dropped)."""
    return re.sub(r"_(bucket|sum|count)$", "", name)
