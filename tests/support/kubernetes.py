"""The Kubernetes manifests (deploy/kubernetes) as kustomize renders them, and the checks a
platform team runs over them: strict schemas (Kubernetes, KServe, KEDA, prometheus-operator)
and a workload policy. Every check returns messages naming the offending field, so that a
test shows what is wrong, and a broken manifest can be shown to be caught."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes.client.models
import kubernetes_validate
import pytest
import yaml

from tests.support.paths import ROOT

Manifest = dict[str, Any]

KUBERNETES_DIR = ROOT / "deploy" / "kubernetes"
#: The kustomizations, by the name render() takes.
BASE = "base"
PRODUCTION_KEDA = "production-keda"
PRODUCTION_HPA = "production-hpa"
KSERVE = "kserve"
KUSTOMIZATIONS = {
    BASE: KUBERNETES_DIR / "base",
    PRODUCTION_KEDA: KUBERNETES_DIR / "overlays" / "production-keda",
    PRODUCTION_HPA: KUBERNETES_DIR / "overlays" / "production-hpa",
    KSERVE: KUBERNETES_DIR / "kserve",
}
#: The distributed training run (deploy/kubernetes/training): two ways, one applied at a time.
PYTORCHJOB = "training-pytorchjob"
INDEXED_JOB = "training-indexed-job"
TRAINING = {
    PYTORCHJOB: KUBERNETES_DIR / "training" / "pytorchjob",
    INDEXED_JOB: KUBERNETES_DIR / "training" / "indexed-job",
}
#: The Kubernetes API the core objects must fit (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.33.0"
#: Custom resources: JSON schemas in the repository (KEDA 2.17, prometheus-operator 0.83) ...
SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob.json",  # training operator, CRD v1
}
#: ... and KServe's own generated models (the kserve package, pinned in pyproject.toml).
KSERVE_MODELS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
}


def require_kubectl() -> str:
    """kubectl's path; skip without it locally, fail in CI (CI is set), as require_tool does."""
    path = shutil.which("kubectl")
    if path is not None:
        return path
    message = "kubectl not found: it renders the kustomizations (kubectl kustomize)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@functools.cache
def _kustomize(name: str) -> str:
    done = subprocess.run(
        [require_kubectl(), "kustomize", str({**KUSTOMIZATIONS, **TRAINING}[name])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {name}: {done.stderr}"
    return done.stdout


def render(name: str) -> list[Manifest]:
    """The objects of a kustomization, fresh (a test may change them)."""
    return [obj for obj in yaml.safe_load_all(_kustomize(name)) if obj]


def find(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
    return found[0]


def generator() -> ModuleType:
    """deploy/kubernetes/generate.py, which writes the generated manifests."""
    spec = importlib.util.spec_from_file_location("generate", KUBERNETES_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- schemas ---------------------------------------------------------------------------------
def schema_errors(obj: Manifest) -> list[str]:
    """What is wrong with one object against its API, strictly (unknown fields included)."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    if key in KSERVE_MODELS:
        return kserve_errors(obj, KSERVE_MODELS[key])
    if key in SCHEMAS:
        errors = _validator(SCHEMAS[key]).iter_errors(obj)
        found = [f"{_where(e.absolute_path)}: {e.message}" for e in errors]
        return found + (_pod_template_errors(obj) if key[1] == "PyTorchJob" else [])
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{_where(error.absolute_path)}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [error.message]
    return []


def _pod_template_errors(job: Manifest) -> list[str]:
    """A PyTorchJob's pod templates, which its CRD copies from the core PodTemplateSpec,
    against Kubernetes' own (as a v1 PodTemplate), strictly."""
    errors = []
    for kind, spec in job.get("spec", {}).get("pytorchReplicaSpecs", {}).items():
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": kind.lower()},
                    "template": spec.get("template", {})}  # fmt: skip
        for error in schema_errors(template):
            errors.append(f".spec.pytorchReplicaSpecs.{kind}{error}")
    return errors


@functools.cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((Path(__file__).parent / "schemas" / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _where(path: Any) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path) or "."


@functools.cache
def _kserve() -> ModuleType:
    """kserve, imported with an empty command line: it parses sys.argv when imported
    (kserve/model_server.py), and an option of pytest's such as --co (which abbreviates its
    --configure_logging) would make it exit."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return importlib.import_module("kserve")
    finally:
        sys.argv = argv


_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
    "bytes": (str,),
    "ResourceQuantity": (str, int, float),
}


def kserve_errors(obj: Manifest, model: str) -> list[str]:
    """Build KServe's generated model from the manifest: an unknown field, a wrong type or a
    missing required field is an error. Then the round trip (model → dict, as the kserve
    client sends it) must give every field of the manifest back unchanged (defaults may be
    added), so that nothing was dropped or altered on the way."""
    errors: list[str] = []
    built = _build(obj, model, "", errors)
    if not errors:
        errors += _lost(obj, _kserve().ApiClient().sanitize_for_serialization(built), "")
    return errors


def _build(data: Any, kind: str, path: str, errors: list[str]) -> Any:
    """``data`` as the model ``kind`` names, recursively, as kserve's ApiClient deserializes,
    with two differences: type names resolve in kubernetes.client.models too (kserve's own
    looks in kserve.models only, and fails at V1Container), and a field the model does not
    have is an error rather than dropped without a word."""
    if data is None:
        return None
    if match := re.fullmatch(r"[lL]ist\[(.+)\]", kind):
        if not isinstance(data, list):
            errors.append(f"{path}: expected a list, got {data!r}")
            return None
        return [_build(item, match[1], f"{path}[{i}]", errors) for i, item in enumerate(data)]
    if match := re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", kind):
        if not isinstance(data, dict):
            errors.append(f"{path}: expected a map, got {data!r}")
            return None
        values = match[1] or match[2]
        return {k: _build(v, values, f"{path}.{k}", errors) for k, v in data.items()}
    if kind == "object":
        return data
    if kind in _PRIMITIVES:
        if not isinstance(data, _PRIMITIVES[kind]) or (isinstance(data, bool) and kind != "bool"):
            errors.append(f"{path}: expected {kind}, got {data!r}")
        return data
    models = (_kserve().models, kubernetes.client.models)
    cls = next((getattr(m, kind) for m in models if hasattr(m, kind)), None)
    if cls is None:
        errors.append(f"{path}: no model for type {kind}")
        return data
    if not isinstance(data, dict):
        errors.append(f"{path}: expected an object ({kind}), got {data!r}")
        return None
    fields = {key: attr for attr, key in cls.attribute_map.items()}
    for key in sorted(data.keys() - fields.keys()):
        errors.append(f"{path}.{key}: unknown field of {kind}")
    values = {
        fields[key]: _build(value, cls.openapi_types[fields[key]], f"{path}.{key}", errors)
        for key, value in data.items()
        if key in fields
    }
    try:
        return cls(**values)
    except ValueError as error:  # the models' check of required fields
        errors.append(f"{path or '.'}: {error}")
        return None


def _lost(sent: Any, back: Any, path: str) -> list[str]:
    """Where ``back`` lacks or changed what ``sent`` holds."""
    if isinstance(sent, dict) and isinstance(back, dict):
        return [
            problem
            for key, value in sent.items()
            for problem in (
                _lost(value, back[key], f"{path}.{key}")
                if key in back
                else [f"{path}.{key}: dropped by the round trip"]
            )
        ]
    if isinstance(sent, list) and isinstance(back, list) and len(sent) == len(back):
        pairs = enumerate(zip(sent, back, strict=True))
        return [problem for i, (s, b) in pairs for problem in _lost(s, b, f"{path}[{i}]")]
    return [] if sent == back else [f"{path}: {sent!r} came back as {back!r}"]


# -- workloads and the policy ----------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """Pods an object makes: where, their pod-level spec and their containers as they run."""

    where: str
    pod: Manifest
    containers: list[Manifest]
    serving: bool  # answers requests: needs liveness and readiness probes


#: InferenceService model fields that are KServe's, not the container's.
_MODEL_ONLY = {"modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri"}


def workloads(objects: list[Manifest]) -> list[Workload]:
    """Every workload of a rendering: Deployments, Jobs, CronJobs, serving runtimes, and
    InferenceServices with their runtime's container merged in as KServe does (the model's
    fields win, env merged by name)."""
    found = []
    runtimes = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterServingRuntime"}
    for obj in objects:
        kind, where = obj["kind"], f"{obj['kind']}/{obj['metadata']['name']}"
        if kind in ("Deployment", "Job", "CronJob"):
            template = obj["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else obj["spec"]
            pod = template["template"]["spec"]
            containers = pod["containers"] + pod.get("initContainers", [])
            found.append(Workload(where, pod, containers, serving=kind == "Deployment"))
        elif kind == "PyTorchJob":
            for replica, spec in obj["spec"]["pytorchReplicaSpecs"].items():
                pod = spec["template"]["spec"]
                containers = pod["containers"] + pod.get("initContainers", [])
                found.append(Workload(f"{where} {replica}", pod, containers, serving=False))
        elif kind == "ClusterServingRuntime":
            found.append(Workload(where, obj["spec"], obj["spec"]["containers"], serving=True))
        elif kind == "InferenceService":
            predictor, model = obj["spec"]["predictor"], obj["spec"]["predictor"]["model"]
            runtime = runtimes[model["runtime"]]["spec"]
            (base,) = runtime["containers"]
            merged = {**base, **{k: v for k, v in model.items() if k not in _MODEL_ONLY}}
            env = {e["name"]: e for e in base.get("env", []) + model.get("env", [])}
            merged["env"] = list(env.values())
            pod = {**predictor, "volumes": runtime.get("volumes", [])}
            found.append(Workload(where, pod, [merged], serving=True))
    return found


def policy_violations(workload: Workload) -> list[str]:
    """What breaks the platform's rules: pinned images, resources, probes, a non-root user,
    a read-only root file system, no capabilities, no privilege, no host paths."""
    problems = []
    pod_context = workload.pod.get("securityContext", {})
    for container in workload.containers:
        where = f"{workload.where} container {container['name']}"
        image = container.get("image", "")
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        if tag in ("", "latest") and "@sha256:" not in image:
            problems.append(f"{where}: image {image!r} is not pinned to a version")
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            missing = {"cpu", "memory"} - resources.get(kind, {}).keys()
            if missing:
                problems.append(f"{where}: resources.{kind} lacks {', '.join(sorted(missing))}")
        if workload.serving:
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in container:
                    problems.append(f"{where}: no {probe}")
        context = {**pod_context, **container.get("securityContext", {})}
        if context.get("runAsNonRoot") is not True or context.get("runAsUser", 1) == 0:
            problems.append(f"{where}: securityContext.runAsNonRoot is not true (or uid 0)")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: securityContext.readOnlyRootFilesystem is not true")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: securityContext.allowPrivilegeEscalation is not false")
        if context.get("privileged"):
            problems.append(f"{where}: securityContext.privileged")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []) or capabilities.get("add"):
            problems.append(f"{where}: securityContext.capabilities do not drop ALL (or add some)")
        if context.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: securityContext.seccompProfile is not RuntimeDefault")
    for volume in workload.pod.get("volumes", []):
        if "hostPath" in volume:
            problems.append(f"{workload.where}: volume {volume['name']} is a hostPath")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if workload.pod.get(field):
            problems.append(f"{workload.where}: {field}")
    return problems


# -- settings --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str
    optional: bool


def env_of(objects: list[Manifest], container: Manifest) -> dict[str, str | SecretRef]:
    """A container's environment: its ConfigMaps (envFrom, from ``objects``) and env;
    Secrets as references."""
    env: dict[str, str | SecretRef] = {}
    for source in container.get("envFrom", []):
        env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = SecretRef(ref["name"], ref["key"], ref.get("optional", False))
    return env


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
