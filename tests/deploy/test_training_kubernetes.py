"""The distributed training run on Kubernetes (deploy/kubernetes/training), offline: the
PyTorchJob (Kubeflow training operator) and the plain indexed Job + headless Service render,
fit their APIs strictly (the PyTorchJob against the pinned CRD schema, its pod templates
against Kubernetes' PodTemplateSpec), follow the platform policy, and start the same torchrun
run of the same ``python -m training`` command, as torchrun itself parses it."""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Iterator

import pytest

from tests.support.kubernetes import (
    BASE,
    INDEXED_JOB,
    PYTORCHJOB,
    TRAINING,
    Manifest,
    cpu_cores,
    find,
    policy_violations,
    render,
    schema_errors,
    workloads,
)
from tests.support.paths import ROOT

KINDS = {
    PYTORCHJOB: {"PyTorchJob", "PersistentVolumeClaim", "NetworkPolicy"},
    INDEXED_JOB: {"Job", "Service", "PersistentVolumeClaim", "NetworkPolicy"},
}
TRAIN_LABELS = {"app.kubernetes.io/name": "nnserve", "app.kubernetes.io/component": "train"}


def mapping_at(obj: Manifest, path: str) -> Manifest:
    for key in path.split("."):
        obj = obj[int(key)] if key.isdigit() else obj[key]
    return obj


def pod_of(name: str) -> tuple[Manifest, Manifest]:
    """(pod spec, the training container) of a rendering's one kind of training pod."""
    (workload,) = workloads(render(name))
    (container,) = workload.containers
    return workload.pod, container


def torchrun_args(argv: list[str], env: dict[str, str]) -> argparse.Namespace:
    """torchrun's own parse of ``argv``, with the PET_* variables it reads as defaults."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        from torch.distributed.run import get_args_parser  # torch: only here

        return get_args_parser().parse_args(argv)


def operator_env(job: Manifest) -> dict[str, str]:
    """What the training operator sets in an elastic PyTorchJob's pods for torchrun
    (pkg/controller.v1/pytorch/elastic.go): rendezvous on worker 0's named port."""
    spec, policy = job["spec"], job["spec"]["elasticPolicy"]
    _, container = pod_of(PYTORCHJOB)
    (port,) = [p for p in container["ports"] if p["name"] == "pytorchjob-port"]
    return {
        "PET_RDZV_ENDPOINT": f"{job['metadata']['name']}-worker-0:{port['containerPort']}",
        "PET_RDZV_BACKEND": policy["rdzvBackend"],
        "PET_NNODES": f"{policy['minReplicas']}:{policy['maxReplicas']}",
        "PET_MAX_RESTARTS": str(policy["maxRestarts"]),
        "PET_RDZV_ID": policy["rdzvId"],
        "PET_NPROC_PER_NODE": spec["nprocPerNode"],
    }


def runs() -> Iterator[tuple[str, argparse.Namespace, Manifest]]:
    """(rendering, torchrun's arguments, training container) of both ways."""
    job = find(render(PYTORCHJOB), "PyTorchJob")
    _, container = pod_of(PYTORCHJOB)
    yield PYTORCHJOB, torchrun_args(container["args"], operator_env(job)), container
    _, container = pod_of(INDEXED_JOB)
    yield INDEXED_JOB, torchrun_args(container["args"], {}), container


@pytest.mark.parametrize("name", list(TRAINING))
def test_every_object_fits_its_api_strictly(name: str) -> None:
    objects = render(name)
    assert {o["kind"] for o in objects} == KINDS[name]
    errors = {f"{o['kind']}/{o['metadata']['name']}": schema_errors(o) for o in objects}
    assert not {where: found for where, found in errors.items() if found}


@pytest.mark.parametrize(
    ("path", "field", "misspelt"),
    [
        ("spec.elasticPolicy", "maxRestarts", "maxRestart"),
        ("spec.pytorchReplicaSpecs.Worker", "restartPolicy", "restartpolicy"),
        ("spec.pytorchReplicaSpecs.Worker.template.spec.containers.0", "volumeMounts", "mounts"),
    ],
)
def test_a_misspelt_pytorchjob_field_is_caught_by_name(
    path: str, field: str, misspelt: str
) -> None:
    job = find(render(PYTORCHJOB), "PyTorchJob")
    mapping = mapping_at(job, path)
    mapping[misspelt] = mapping.pop(field)
    (error,) = schema_errors(job)
    assert repr(misspelt) in error, error


def test_a_wrong_restart_policy_or_replica_count_fails_the_crd_schema() -> None:
    job = find(render(PYTORCHJOB), "PyTorchJob")
    worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]
    worker["restartPolicy"], worker["replicas"] = "Sometimes", "two"
    errors = schema_errors(job)
    assert len(errors) == 2 and all("pytorchReplicaSpecs.Worker" in e for e in errors), errors


@pytest.mark.parametrize("name", list(TRAINING))
def test_every_training_pod_follows_the_platform_policy(name: str) -> None:
    found = workloads(render(name))
    assert found
    assert [problem for workload in found for problem in policy_violations(workload)] == []
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for workload in found:
        assert workload.pod["enableServiceLinks"] is False
        assert workload.pod["automountServiceAccountToken"] is False
        images = {c["image"] for c in workload.containers}
        assert images == {f"ghcr.io/nnserve/nnserve-train:{version}"}  # the release's trainer


def test_both_ways_start_the_same_torchrun_run_of_the_same_command() -> None:
    from training.cli import parse  # imports torch: only here

    (_, first, first_container), (_, second, second_container) = runs()
    assert first.training_script_args == second.training_script_args
    for args, container in ((first, first_container), (second, second_container)):
        assert args.module and args.training_script == "training"
        assert args.rdzv_backend == "c10d" and args.max_restarts == 3
        assert args.nnodes in ("2", "2:2") and args.nproc_per_node == "1"
        training = parse(args.training_script_args)
        assert training.model == "fashion-cnn" and training.command == "train"
        assert str(training.repository) == "/models" and str(training.checkpoint_dir) == "/runs"
        assert training.threads == cpu_cores(container["resources"]["limits"]["cpu"])
        assert training.batch_size % 2 == 0  # the global batch, split over 2 processes
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["GLOO_SOCKET_IFNAME"] == "eth0"
        assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"  # restarts get a fresh store
    assert first.rdzv_id == second.rdzv_id


def test_the_pytorchjob_is_a_fixed_world_of_workers_with_the_operators_names() -> None:
    job = find(render(PYTORCHJOB), "PyTorchJob")["spec"]
    assert set(job["pytorchReplicaSpecs"]) == {"Worker"}  # elastic mode: workers only
    worker = job["pytorchReplicaSpecs"]["Worker"]
    policy = job["elasticPolicy"]
    assert policy["minReplicas"] == policy["maxReplicas"] == worker["replicas"] == 2
    _, container = pod_of(PYTORCHJOB)
    assert container["name"] == "pytorch"  # where the operator puts its variables
    assert container["command"] == ["torchrun"]


def test_the_indexed_job_finds_pod_zero_through_the_headless_service() -> None:
    objects = render(INDEXED_JOB)
    job, service = find(objects, "Job"), find(objects, "Service")
    args = next(a for name, a, _ in runs() if name == INDEXED_JOB)
    host, port = args.rdzv_endpoint.rsplit(":", 1)
    name = job["metadata"]["name"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(args.nnodes)
    pod, container = pod_of(INDEXED_JOB)
    assert host == f"{name}-0.{service['metadata']['name']}" == f"{name}-0.{pod['subdomain']}"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert (
        service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    )
    (service_port,) = service["spec"]["ports"]
    assert int(port) == service_port["port"] == service_port["targetPort"]
    assert int(port) in {p["containerPort"] for p in container["ports"]}
    assert pod["restartPolicy"] == "OnFailure"  # a restarted container keeps its DNS name


@pytest.mark.parametrize("name", list(TRAINING))
def test_models_and_run_folder_are_shared_volumes_and_the_pods_may_talk(name: str) -> None:
    objects = render(name)
    pod, container = pod_of(name)
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}  # fmt: skip
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    models = find(render(BASE), "PersistentVolumeClaim")
    runs_claim = find(objects, "PersistentVolumeClaim")
    assert claims[mounts["/models"]["name"]] == models["metadata"]["name"]
    assert claims[mounts["/runs"]["name"]] == runs_claim["metadata"]["name"]
    assert not mounts["/models"].get("readOnly") and not mounts["/runs"].get("readOnly")
    assert runs_claim["spec"]["accessModes"] == ["ReadWriteMany"]  # rank 0 moves on restart
    assert "/tmp" in mounts  # read-only root: staging and caches go to /tmp
    policy = find(objects, "NetworkPolicy")["spec"]
    labels = (
        find(objects, "PyTorchJob")["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]
        if name == PYTORCHJOB
        else find(objects, "Job")["spec"]["template"]
    )["metadata"]["labels"]
    assert TRAIN_LABELS.items() <= labels.items()
    assert policy["podSelector"]["matchLabels"] == TRAIN_LABELS
    (ingress,) = policy["ingress"]
    assert ingress == {"from": [{"podSelector": {"matchLabels": TRAIN_LABELS}}]}
