"""Writes the Kubernetes forms of the compose stack's alert rules and dashboard, so that each
has one source:

    .venv/bin/python deploy/kubernetes/generate.py

    deploy/prometheus/alerts.yml              -> components/monitoring/prometheusrule.yaml
    deploy/grafana/dashboards/nnserve.json    -> components/monitoring/grafana-dashboard.yaml

Each source is embedded as it is, indented (the rules keep their comments); the tests
(tests/deploy/test_kubernetes.py) regenerate both and fail when a committed file differs.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yml"
DASHBOARD = HERE.parent / "grafana" / "dashboards" / "nnserve.json"
MONITORING = HERE / "components" / "monitoring"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD_CONFIGMAP = MONITORING / "grafana-dashboard.yaml"

_HEADER = """\
# Generated from {source} by deploy/kubernetes/generate.py:
# edit the source, then run `.venv/bin/python deploy/kubernetes/generate.py`
# (tests/deploy/test_kubernetes.py fails while the two differ).
"""


def indented(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line if line.strip() else "\n" for line in text.splitlines(True))


def prometheus_rule() -> str:
    """alerts.yml's groups as a PrometheusRule."""
    source = ALERTS.read_text()
    groups = source[source.index("\ngroups:") + 1 :]
    return (
        _HEADER.format(source="deploy/prometheus/alerts.yml")
        + """\
# The rules select job="nnserve", which the ServiceMonitor gives nnserve's series.
# Add the label your Prometheus selects rules by (kube-prometheus-stack: release: <name>).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: nnserve
  labels:
    app.kubernetes.io/name: nnserve
spec:
"""
        + indented(groups, 2)
    )


def dashboard_configmap() -> str:
    """The dashboard as a ConfigMap that Grafana's dashboard sidecar loads."""
    return (
        _HEADER.format(source="deploy/grafana/dashboards/nnserve.json")
        + """\
# Grafana's sidecar (kube-prometheus-stack: sidecar.dashboards.enabled) loads every
# ConfigMap labelled grafana_dashboard: "1". The panels use the Prometheus datasource of
# uid "nnserve-prometheus" (deploy/grafana/provisioning): provision one with that uid.
apiVersion: v1
kind: ConfigMap
metadata:
  name: nnserve-dashboard
  labels:
    app.kubernetes.io/name: nnserve
    grafana_dashboard: "1"
data:
  nnserve.json: |
"""
        + indented(DASHBOARD.read_text(), 4)
    )


def render() -> dict[Path, str]:
    """Every generated file and its text."""
    return {PROMETHEUS_RULE: prometheus_rule(), DASHBOARD_CONFIGMAP: dashboard_configmap()}


def main() -> None:
    for path, text in render().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(HERE)}")


if __name__ == "__main__":
    main()
