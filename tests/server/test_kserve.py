"""nnserve as KServe runs it: the args of the rendered ClusterServingRuntime, exactly, start
the real service on a model folder laid out as KServe's storage initializer leaves it under
``/mnt/models``, and v1 and v2 inference work under the InferenceService's name. The
manifest cannot drift from the code: change one and this fails.

As root (CI) the service runs in a private mount namespace with the folder bound at
``/mnt/models`` itself; otherwise that one argument points at the folder where it is.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelrepo import CARD_FILE, MODEL_FILE
from tests.support import samples
from tests.support.kubernetes import KSERVE, env_of, render
from tests.support.paths import MODELS
from tests.support.server import running_server

pytestmark = pytest.mark.server
ISVC = "cancer"  # an InferenceService name that is not the card's: the service must rename
MOUNT = "/mnt/models"


def _runtime() -> dict[str, Any]:
    objects = render(KSERVE)
    (runtime,) = [o for o in objects if o["kind"] == "ClusterServingRuntime"]
    (container,) = [c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container"]
    return {"container": container, "env": env_of(objects, container)}


def _private_mount(folder: Path) -> list[str] | None:
    """A command prefix running the service with ``folder`` bound at /mnt/models in a mount
    namespace of its own (nothing changes outside it); None where that cannot be done."""
    if shutil.which("unshare") is None or not Path("/mnt").is_dir():
        return None
    script = 'mount -t tmpfs tmpfs /mnt && mkdir /mnt/models && mount --bind "$0" /mnt/models'
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(folder)],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return None
    return [
        "unshare", "--mount", "--propagation", "private",
        "sh", "-c", script + ' && shift && exec "$@"', str(folder), "--",
    ]  # fmt: skip


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("layout", ["version-files", "bare-graph"])
def test_the_serving_runtimes_args_serve_a_kserve_model_folder(tmp_path: Path, layout: str) -> None:
    runtime = _runtime()
    container = runtime["container"]
    assert container["command"] == ["python", "-m", "service"]
    args = [a.replace("{{.Name}}", ISVC) for a in container["args"]]
    assert f"--model_dir={MOUNT}" in args
    folder = tmp_path / "storage"
    folder.mkdir()
    for name in [MODEL_FILE] + ([CARD_FILE] if layout == "version-files" else []):
        shutil.copy(MODELS / "breast-cancer-ann" / "1" / name, folder / name)

    prefix = _private_mount(folder)
    if prefix is None:
        args = [f"--model_dir={folder}" if a == f"--model_dir={MOUNT}" else a for a in args]
    port = next(int(a.split("=", 1)[1]) for a in args if a.startswith("--http_port="))
    if not _port_free(port):  # the runtime's own port is taken on this machine
        from tests.support.server import free_port

        old, port = port, free_port()
        args = [f"--http_port={port}" if a == f"--http_port={old}" else a for a in args]
    env = {**runtime["env"], "NNSERVE_HOST": "127.0.0.1", "NNSERVE_DATA_DIR": str(tmp_path / "d")}

    with running_server(MODELS, tmp_path, args=args, prefix=prefix or (), port=port, **env) as s:
        meta = httpx.get(f"{s.url}/v2/models/{ISVC}", timeout=30)
        assert meta.status_code == 200, s.logs()
        assert meta.json()["name"] == ISVC and meta.json()["versions"] == ["1"]
        v1 = httpx.post(
            f"{s.url}/v1/models/{ISVC}:predict",
            json={"instances": samples.rows(2).tolist()},
            timeout=30,
        )
        assert v1.status_code == 200, v1.text
        assert len(v1.json()["predictions"]) == 2
        rows = samples.rows(2)
        tensor = {"name": meta.json()["inputs"][0]["name"], "shape": list(rows.shape),
                  "datatype": "FP32", "data": rows.ravel().tolist()}  # fmt: skip
        v2 = httpx.post(f"{s.url}/v2/models/{ISVC}/infer", json={"inputs": [tensor]}, timeout=30)
        assert v2.status_code == 200, v2.text
        assert {o["name"] for o in v2.json()["outputs"]} >= {"probabilities"}
        assert httpx.get(f"{s.url}/v2/models/breast-cancer-ann", timeout=30).status_code == 404
