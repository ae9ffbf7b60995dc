"""The container contract the Kubernetes manifests promise, held by the real process: it runs
as the manifest's non-root UID, with the code and the model repository read-only to it,
writes nowhere but its data dir and temporary folders (the pod's volumes: /data, /tmp and
/dev/shm), and ends cleanly on SIGTERM within the manifest's termination grace period.

Needs root (to drop to the UID with ``setpriv``, as the kubelet does); CI runs as root.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import samples
from tests.support.kubernetes import BASE, env_of, find, render
from tests.support.paths import MODELS, ROOT
from tests.support.server import process_tree, running_server

pytestmark = pytest.mark.server
ANN = "breast-cancer-ann"


def _deployment() -> dict[str, Any]:
    return find(render(BASE), "Deployment", "nnserve")


@pytest.fixture
def sandbox() -> Iterator[Path]:
    """A folder the UID can reach (pytest's tmp_path is private to root)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run the service as another UID")
    folder = Path(tempfile.mkdtemp(prefix="nnserve-container-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _owned_by(uid: int, tree: Path, *folders: Path) -> list[Path]:
    """What ``uid`` owns in ``tree`` (all of it) and directly in ``folders`` (the places every
    UID may write to: anything it made there starts at their top)."""
    found = []
    for folder, dirs, files in os.walk(tree):
        found += [Path(folder, name) for name in dirs + files]
    for folder in folders:
        found += list(folder.iterdir()) if folder.is_dir() else []
    owned = []
    for path in found:
        try:
            if path.lstat().st_uid == uid:
                owned.append(path)
        except OSError:
            continue
    return owned


def test_runs_as_the_manifests_uid_writes_only_its_volumes_and_stops_in_the_grace_period(
    sandbox: Path,
) -> None:
    deployment = _deployment()
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    uid = int(container["securityContext"].get("runAsUser") or pod["securityContext"]["runAsUser"])
    assert uid != 0
    grace = float(pod["terminationGracePeriodSeconds"])
    env = env_of(render(BASE), container)
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"/tmp", env["NNSERVE_DATA_DIR"]} <= writable

    as_uid = _as(uid)
    # the code and the models are not writable by the UID: any write would fail, not hide
    if subprocess.run([*as_uid, "test", "-w", str(ROOT)], check=False).returncode == 0:
        pytest.skip(f"{ROOT} is writable by UID {uid} here: the contract cannot be checked")
    data, tmp = sandbox / "data", sandbox / "tmp"
    for folder in (data, tmp):
        folder.mkdir()
        os.chown(folder, uid, uid)
    before = {p for p in Path("/dev/shm").iterdir()} if Path("/dev/shm").is_dir() else set()

    with running_server(
        MODELS,
        sandbox,
        prefix=as_uid,
        NNSERVE_WORKERS=env["NNSERVE_WORKERS"],
        NNSERVE_DRAIN_TIMEOUT=env["NNSERVE_DRAIN_TIMEOUT"],
        NNSERVE_DATA_DIR=str(data),
        NNSERVE_POLL_INTERVAL="0",
        TMPDIR=str(tmp),
        HOME=str(tmp),
        PYTHONDONTWRITEBYTECODE="1",
    ) as server:
        ready = httpx.get(f"{server.url}/v2/health/ready", timeout=30)
        assert ready.status_code == 200, server.logs()
        v1 = httpx.post(
            f"{server.url}/v1/models/{ANN}:predict",
            json={"instances": samples.rows(1).tolist()},
            timeout=30,
        )
        assert v1.status_code == 200, v1.text
        feedback = httpx.post(
            f"{server.url}/v1/models/{ANN}/feedback",
            json={"id": v1.headers["x-request-id"], "label": v1.json()["predictions"][0]["label"]},
            timeout=30,
        )
        assert feedback.status_code == 200, feedback.text
        processes = process_tree(server.process.pid)
        assert len(processes) >= 1 + int(env["NNSERVE_WORKERS"])  # master, workers, log writer
        for pid in processes:
            assert _uids(pid) == {uid}, f"process {pid} runs as {_uids(pid)}"

        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=grace)
        stopped = time.monotonic() - started
    assert code == 0, server.logs()
    assert stopped < grace

    assert (data / "predictions.db").stat().st_uid == uid  # the log was written, there
    after = {p for p in Path("/dev/shm").iterdir()} if Path("/dev/shm").is_dir() else set()
    assert not [p for p in after - before if p.lstat().st_uid == uid]  # run folder removed
    strays = _owned_by(uid, ROOT, Path("/tmp"), Path("/var/tmp"), Path(tempfile.gettempdir()))
    assert [p for p in strays if not p.is_relative_to(sandbox)] == []


def _as(uid: int) -> list[str]:
    """``setpriv`` dropping to ``uid`` with no capability, or, where this machine's Python is
    out of that UID's reach (an interpreter under root's home), with the one capability of
    reading and searching folders it may not: never of writing (what the test checks)."""
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    read = "+dac_read_search"
    for prefix in (drop, [*drop, f"--inh-caps={read}", f"--ambient-caps={read}"]):
        # this very environment, whole: the interpreter's home and the service's packages
        check = f"import sys, service.app; sys.exit(sys.base_prefix != {sys.base_prefix!r})"
        done = subprocess.run([*prefix, sys.executable, "-c", check], capture_output=True)
        if done.returncode == 0:
            return prefix
    pytest.skip(f"this machine's Python ({sys.executable}) cannot run as UID {uid}")


def _uids(pid: int) -> set[int]:
    """Real, effective, saved and file-system UIDs of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return {int(x) for x in line.split()[1:]}
    raise AssertionError(f"no Uid line for {pid}")
