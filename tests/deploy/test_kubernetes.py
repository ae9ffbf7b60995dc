"""The Kubernetes manifests (deploy/kubernetes) checked offline, without a cluster: kustomize
renders every kustomization; every object fits its API strictly (Kubernetes 1.33, KServe's
generated models, KEDA 2.17 and prometheus-operator 0.83 schemas); every workload follows the
platform policy; the manifests agree with each other and with the service (settings, routes,
alert rules, dashboard); and a broken manifest is caught, with the field named.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.app import create_app
from service.settings import Settings
from tests.support.deploy import (
    ALERTS,
    DASHBOARD,
    alert_rules,
    documented_metrics,
    load_yaml,
    require_tool,
)
from tests.support.kubernetes import (
    BASE,
    KSERVE,
    KUSTOMIZATIONS,
    PRODUCTION_HPA,
    PRODUCTION_KEDA,
    Manifest,
    SecretRef,
    Workload,
    cpu_cores,
    env_of,
    find,
    generator,
    policy_violations,
    render,
    schema_errors,
    workloads,
)
from tests.support.paths import ROOT

PRODUCTION = [PRODUCTION_KEDA, PRODUCTION_HPA]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"ghcr.io/nnserve/nnserve:{VERSION}"
TRAIN_IMAGE = f"ghcr.io/nnserve/nnserve-train:{VERSION}"
BASE_KINDS = {"ConfigMap", "Service", "PersistentVolumeClaim", "Deployment", "Job", "NetworkPolicy"}
PRODUCTION_KINDS = BASE_KINDS | {
    "Namespace",
    "CronJob",
    "PodDisruptionBudget",
    "ServiceMonitor",
    "PrometheusRule",
}
KINDS = {
    BASE: BASE_KINDS,
    PRODUCTION_KEDA: PRODUCTION_KINDS | {"ScaledObject"},
    PRODUCTION_HPA: PRODUCTION_KINDS | {"HorizontalPodAutoscaler"},
    KSERVE: {"ClusterServingRuntime", "InferenceService"},
}


def serving(name: str) -> list[Workload]:
    return [w for w in workloads(render(name)) if w.serving]


def container(obj: Manifest) -> Manifest:
    """The one container of a Deployment or CronJob."""
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    (only,) = spec["template"]["spec"]["containers"]
    return only


def literal_env(found: Manifest) -> dict[str, str]:
    return {var["name"]: var["value"] for var in found.get("env", []) if "value" in var}


# -- rendering and schemas -------------------------------------------------------------------
@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_every_object_fits_its_api_strictly(name: str) -> None:
    objects = render(name)
    assert {o["kind"] for o in objects} == KINDS[name]
    errors = {f"{o['kind']}/{o['metadata']['name']}": schema_errors(o) for o in objects}
    assert not {where: found for where, found in errors.items() if found}


def test_no_secret_is_in_the_repository() -> None:
    """Secrets are created in the cluster (docs/kubernetes.md) and only referred to here."""
    for name in KUSTOMIZATIONS:
        assert "Secret" not in {o["kind"] for o in render(name)}
    deployment = container(find(render(BASE), "Deployment"))
    assert env_of(render(BASE), deployment)["NNSERVE_ADMIN_TOKEN"] == SecretRef(
        "nnserve-admin", "token", optional=True
    )  # no Secret: the management API answers 403


def deployment_container(objects: list[Manifest]) -> Manifest:
    return container(find(objects, "Deployment"))


def mapping_at(obj: Manifest, path: str) -> Manifest:
    for key in path.split("."):
        obj = obj[int(key)] if key.isdigit() else obj[key]
    return obj


ISVC = "InferenceService/breast-cancer-ann"
#: (rendering, object, path of a mapping in it, one of its fields, that field misspelt)
MISSPELT = [
    (BASE, "Deployment", "spec.template.spec.containers.0", "readinessProbe", "readynessProbe"),
    (KSERVE, ISVC, "spec.predictor.model", "storageUri", "storageURI"),
    (KSERVE, "ClusterServingRuntime", "spec", "protocolVersions", "protocols"),
    (PRODUCTION_KEDA, "ScaledObject", "spec", "maxReplicaCount", "maxReplicas"),
    (PRODUCTION_KEDA, "ServiceMonitor", "spec.endpoints.0", "path", "metricsPath"),
    (PRODUCTION_HPA, "PrometheusRule", "spec.groups.0.rules.0", "for", "fr"),
    (PRODUCTION_HPA, "HorizontalPodAutoscaler", "spec", "minReplicas", "minReplica"),
]


@pytest.mark.parametrize(
    ("name", "target", "path", "field", "misspelt"), MISSPELT, ids=[m[4] for m in MISSPELT]
)
def test_a_misspelt_field_fails_the_schema_by_name(
    name: str, target: str, path: str, field: str, misspelt: str
) -> None:
    obj = find(render(name), *target.split("/"))
    mapping = mapping_at(obj, path)
    mapping[misspelt] = mapping.pop(field)
    errors = schema_errors(obj)
    (error,) = errors
    assert repr(misspelt) in error or f".{misspelt}: unknown field" in error, error


def test_an_inference_service_with_a_wrong_type_or_no_model_format_fails() -> None:
    service = find(render(KSERVE), "InferenceService", "breast-cancer-ann")
    service["spec"]["predictor"]["minReplicas"] = "one"
    del service["spec"]["predictor"]["model"]["modelFormat"]
    errors = schema_errors(service)
    assert errors[0] == ".spec.predictor.minReplicas: expected int, got 'one'"
    assert errors[1].startswith(".spec.predictor.model: ") and "model_format" in errors[1]
    assert len(errors) == 2


# -- the platform's policy -------------------------------------------------------------------
@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_every_workload_follows_the_platform_policy(name: str) -> None:
    found = workloads(render(name))
    assert found
    assert [problem for workload in found for problem in policy_violations(workload)] == []


def _set(path: str, value: Any) -> Callable[[Manifest], None]:
    """Sets a dotted path under the Deployment's container."""

    def change(found: Manifest) -> None:
        *parents, last = path.split(".")
        for key in parents:
            found = found.setdefault(key, {})
        found[last] = value

    return change


POLICY_BREAKS: list[tuple[str, Callable[[Manifest], None], str]] = [
    ("no liveness probe", lambda c: c.pop("livenessProbe"), "livenessProbe"),
    ("latest image", _set("image", "ghcr.io/nnserve/nnserve:latest"), "not pinned"),
    ("untagged image", _set("image", "ghcr.io/nnserve/nnserve"), "not pinned"),
    ("no limits", lambda c: c["resources"].pop("limits"), "resources.limits"),
    ("root", _set("securityContext.runAsUser", 0), "runAsNonRoot"),
    ("writable root", _set("securityContext.readOnlyRootFilesystem", False), "readOnlyRoot"),
    ("escalation", _set("securityContext.allowPrivilegeEscalation", True), "PrivilegeEscal"),
    ("capabilities", _set("securityContext.capabilities.drop", []), "capabilities"),
    ("privileged", _set("securityContext.privileged", True), "privileged"),
]


@pytest.mark.parametrize(
    ("breaks", "message"),
    [(b, m) for _, b, m in POLICY_BREAKS],
    ids=[what for what, _, _ in POLICY_BREAKS],
)
def test_a_workload_breaking_the_policy_is_caught(
    breaks: Callable[[Manifest], None], message: str
) -> None:
    objects = render(BASE)
    breaks(deployment_container(objects))
    (deployment,) = [w for w in workloads(objects) if w.where == "Deployment/nnserve"]
    problems = policy_violations(deployment)
    assert len(problems) == 1 and message in problems[0], problems


def test_a_host_path_volume_is_caught() -> None:
    objects = render(BASE)
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    (deployment,) = [w for w in workloads(objects) if w.where == "Deployment/nnserve"]
    assert policy_violations(deployment) == ["Deployment/nnserve: volume host is a hostPath"]


def test_the_alert_rules_of_the_prometheusrule_pass_promtool(tmp_path: Path) -> None:
    rule = find(render(PRODUCTION_KEDA), "PrometheusRule")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    done = subprocess.run(
        [require_tool("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(alert_rules())} rules found" in done.stdout + done.stderr


# -- the manifests agree with each other and with the service --------------------------------
@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_workers_equal_the_cpu_limit(name: str) -> None:
    """One worker process per CPU of the limit, one onnxruntime thread per session: the pod
    sees its node's CPUs, so "auto" would oversubscribe the limit."""
    objects = render(name)
    for workload in serving(name):
        (found,) = workload.containers
        env, cpus = env_of(objects, found), cpu_cores(found["resources"]["limits"]["cpu"])
        assert cpus.is_integer() and env["NNSERVE_WORKERS"] == str(int(cpus)), workload.where
        assert env["NNSERVE_SESSION_THREADS"] == "1", workload.where


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_the_settings_are_the_services_and_it_accepts_them(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every NNSERVE_* variable is a setting, and the service's Settings accept the values
    (Secrets stand in as placeholders): a misspelt or invalid setting fails here, not at
    the pods' start."""
    for key in [key for key in os.environ if key.startswith("NNSERVE_")]:
        monkeypatch.delenv(key)  # the manifests' settings alone
    known = {f"NNSERVE_{field.upper()}" for field in Settings.model_fields}
    stand_ins = {"dsn": "postgresql://nnserve@postgres/nnserve", "token": "0" * 64}
    objects = render(name)
    for workload in serving(name):
        (found,) = workload.containers
        env = env_of(objects, found)
        assert set(env) <= known, (workload.where, set(env) - known)
        values = {k: stand_ins[v.key] if isinstance(v, SecretRef) else v for k, v in env.items()}
        Settings(**{key.removeprefix("NNSERVE_").lower(): v for key, v in values.items()})


def test_grace_period_outlasts_the_pre_stop_pause_and_the_drain() -> None:
    for name in [BASE, *PRODUCTION]:
        objects = render(name)
        deployment = find(objects, "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        pause = container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
        drain = float(env_of(objects, container(deployment))["NNSERVE_DRAIN_TIMEOUT"])
        assert drain == 30 and pod["terminationGracePeriodSeconds"] > pause + drain


def test_base_is_one_replica_on_either_prediction_log() -> None:
    objects = render(BASE)
    deployment = find(objects, "Deployment")
    env = env_of(objects, container(deployment))
    assert deployment["spec"]["replicas"] == int(env["NNSERVE_REPLICAS"]) == 1
    assert env["NNSERVE_PREDICTION_LOG_URL"] == SecretRef("nnserve-postgres", "dsn", True)
    assert env["NNSERVE_DATA_DIR"] == "/data"


@pytest.mark.parametrize("name", PRODUCTION)
def test_replicas_bound_is_the_autoscalers_maximum_and_the_log_is_shared(name: str) -> None:
    objects = render(name)
    deployment = find(objects, "Deployment")
    env = env_of(objects, container(deployment))
    if name == PRODUCTION_KEDA:
        scaler = find(objects, "ScaledObject")["spec"]
        low, high = scaler["minReplicaCount"], scaler["maxReplicaCount"]
    else:
        scaler = find(objects, "HorizontalPodAutoscaler")["spec"]
        low, high = scaler["minReplicas"], scaler["maxReplicas"]
    assert scaler["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert int(env["NNSERVE_REPLICAS"]) == high
    assert 2 <= low < high  # the PodDisruptionBudget lets one go at a time
    assert find(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert "replicas" not in deployment["spec"]  # the autoscaler's to set
    assert env["NNSERVE_PREDICTION_LOG_URL"] == SecretRef("nnserve-postgres", "dsn", False)


def service_paths() -> set[str]:
    """The GET paths in the service's route table (its OpenAPI document)."""
    spec = create_app(Settings(poll_interval=0)).openapi()
    return {path for path, methods in spec["paths"].items() if "get" in methods}


LIVE, READY = "/v2/health/live", "/v2/health/ready"


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_probes_point_at_the_services_health_routes_on_its_port(name: str) -> None:
    paths = service_paths()
    for workload in serving(name):
        (found,) = workload.containers
        ports = {p.get("name"): p["containerPort"] for p in found["ports"]}
        if "http" in ports:
            port: int | str = "http"  # the named port
        else:  # the runtime: the port KServe gives it
            (http_port,) = re.findall(r"--http_port=(\d+)", " ".join(found["args"]))
            port = int(http_port)
            assert list(ports.values()) == [port]
        paths_of = {"startupProbe": LIVE, "livenessProbe": LIVE, "readinessProbe": READY}
        probes = {probe: found[probe]["httpGet"] for probe in paths_of}
        assert {probe: get["path"] for probe, get in probes.items()} == paths_of
        assert {get["path"] for get in probes.values()} <= paths
        assert {get["port"] for get in probes.values()} == {port}, workload.where
        startup = found["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


@pytest.mark.parametrize("name", PRODUCTION)
def test_prometheus_scrapes_metrics_as_the_job_the_alerts_select(name: str) -> None:
    objects = render(name)
    monitor = find(objects, "ServiceMonitor")["spec"]
    service = find(objects, "Service", "nnserve")
    deployment = find(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (endpoint,) = monitor["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["path"] in service_paths()
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert endpoint["port"] == port["name"] and port["targetPort"] == "http"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # job="nnserve", which every alert rule and the dashboard select on
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "nnserve"
    assert all('job="nnserve"' in rule["expr"] for rule in alert_rules())
    # one NetworkPolicy: only the serving port is open to ingress
    policy = find(objects, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert container(deployment)["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"}
    ]


def test_keda_scales_on_requests_in_flight_per_pod() -> None:
    objects = render(PRODUCTION_KEDA)
    scaled = find(objects, "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    query = trigger["metadata"]["query"]
    assert query.startswith("sum(nnserve_requests_in_flight{") and query.endswith("})")
    assert "nnserve_requests_in_flight" in documented_metrics()
    assert 'job="nnserve"' in query and 'protocol=~"v1|v2"' in query
    assert f'namespace="{scaled["metadata"]["namespace"]}"' in query
    assert float(trigger["metadata"]["threshold"]) > 0


def test_the_generated_manifests_are_up_to_date_with_their_sources() -> None:
    for path, text in generator().render().items():
        assert path.read_text() == text, f"{path.name} is stale: run deploy/kubernetes/generate.py"


def test_the_rendered_rules_and_dashboard_are_the_compose_stacks() -> None:
    objects = render(PRODUCTION_KEDA)
    rule = find(objects, "PrometheusRule")
    assert rule["spec"]["groups"] == load_yaml(ALERTS)["groups"]
    board = find(objects, "ConfigMap", "nnserve-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["nnserve.json"]) == json.loads(DASHBOARD.read_text())


def test_the_retrain_job_publishes_through_the_champion_challenger_gate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from training.cli import parse  # imports torch: only here

    monkeypatch.setenv("NNSERVE_PREDICTION_LOG_URL", "postgresql://nnserve:pw@db/log")

    objects = render(PRODUCTION_KEDA)
    cron = find(objects, "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    retrain = container(cron)
    assert retrain["image"] == TRAIN_IMAGE
    assert retrain["command"] == ["python", "-m", "training"]
    args = parse(retrain["args"])
    assert args.command == "retrain" and args.model == "breast-cancer-ann"
    assert (args.repository, args.report_dir, args.tolerance) == (
        Path("/models"),
        Path("/reports"),
        0.005,
    )
    # the DSN comes from the Secret through the environment, never on the command line
    assert args.feedback_env == "NNSERVE_PREDICTION_LOG_URL"
    assert args.feedback == "postgresql://nnserve:pw@db/log"
    assert not any("postgres" in a for a in retrain["args"])
    env = env_of(objects, retrain)
    assert env["NNSERVE_PREDICTION_LOG_URL"] == SecretRef("nnserve-postgres", "dsn", False)
    assert args.threads == cpu_cores(retrain["resources"]["limits"]["cpu"])
    # the one writer of the shared repository; the serving pods only read it
    assert find(objects, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    assert models_mount(cron) == ("nnserve-models", False)
    assert models_mount(find(objects, "Deployment")) == ("nnserve-models", True)


def models_mount(obj: Manifest) -> tuple[str, bool]:
    """The claim mounted at /models and whether it is read-only there."""
    (workload,) = workloads([obj])
    (mount,) = [m for m in workload.containers[0]["volumeMounts"] if m["mountPath"] == "/models"]
    (volume,) = [v for v in workload.pod["volumes"] if v["name"] == mount["name"]]
    return volume["persistentVolumeClaim"]["claimName"], mount.get("readOnly", False)


def test_the_serving_runtime_starts_the_service_as_kserve_runs_a_runtime() -> None:
    objects = render(KSERVE)
    runtime = find(objects, "ClusterServingRuntime")
    spec = runtime["spec"]
    assert spec["supportedModelFormats"] == [{"name": "onnx", "version": "1", "autoSelect": True}]
    assert spec["protocolVersions"] == ["v1", "v2"]
    (found,) = spec["containers"]
    assert found["name"] == "kserve-container" and found["image"] == IMAGE
    assert found["command"] == ["python", "-m", "service"]
    assert found["args"] == [
        "--model_name={{.Name}}",
        "--model_dir=/mnt/models",
        "--http_port=8080",
    ]
    mounts = {m["mountPath"] for m in found["volumeMounts"]}
    assert literal_env(found)["NNSERVE_DATA_DIR"].startswith("/tmp/") and "/tmp" in mounts
    assert "/dev/shm" in mounts


@pytest.mark.parametrize("name", ["breast-cancer-ann", "breast-cancer-ann-raw"])
def test_the_inference_services_use_the_runtime_and_the_models_volume(name: str) -> None:
    objects = render(KSERVE)
    predictor = find(objects, "InferenceService", name)["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == find(objects, "ClusterServingRuntime")["metadata"]["name"]
    assert model["modelFormat"]["name"] == "onnx"
    claim = find(render(BASE), "PersistentVolumeClaim")["metadata"]["name"]
    assert model["storageUri"] == f"pvc://{claim}/breast-cancer-ann/1"
    (workload,) = [w for w in workloads(objects) if w.where == f"InferenceService/{name}"]
    env = env_of(objects, workload.containers[0])
    if env["NNSERVE_PREDICTION_LOG"] == "true":  # several pods: one PostgreSQL log
        assert env["NNSERVE_PREDICTION_LOG_URL"] == SecretRef("nnserve-postgres", "dsn", False)
        assert int(env["NNSERVE_REPLICAS"]) == predictor["maxReplicas"]


def test_the_raw_deployment_example_is_in_raw_deployment_mode() -> None:
    raw = find(render(KSERVE), "InferenceService", "breast-cancer-ann-raw")
    assert raw["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    text = (KUSTOMIZATIONS[KSERVE] / "inferenceservice-raw.yaml").read_text()
    assert "canaryTrafficPercent" in text  # documented there


def test_images_are_the_projects_release_never_latest() -> None:
    images = {
        found["image"]
        for name in KUSTOMIZATIONS
        for workload in workloads(render(name))
        for found in workload.containers
    }
    assert images == {IMAGE, TRAIN_IMAGE}


def test_pods_get_no_service_links_nor_api_token() -> None:
    """A Service named nnserve would otherwise put NNSERVE_PORT=tcp://... into every pod's
    environment, which the settings read."""
    for name in [BASE, *PRODUCTION]:
        for workload in workloads(render(name)):
            assert workload.pod["enableServiceLinks"] is False, workload.where
            assert workload.pod["automountServiceAccountToken"] is False, workload.where
