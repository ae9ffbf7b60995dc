"""Load-time checks: sha256, session, reference outputs. A refused version never serves."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from modelrepo import scan
from service.app import create_app
from service.settings import Settings
from tests.support.paths import MODELS, ROOT


def copy_repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(MODELS, root)
    return root


def add_version(root: Path, name: str, version: int) -> Path:
    target = root / name / str(version)
    shutil.copytree(root / name / "1", target)
    card = json.loads((target / "model.json").read_text())
    card["version"] = version
    (target / "model.json").write_text(json.dumps(card))
    return target


def metric_value(text: str, prefix: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert lines, f"no sample starting with {prefix}"
    return float(lines[0].rsplit(" ", 1)[1])


def test_bad_versions_are_refused_and_the_last_good_one_serves(tmp_path: Path) -> None:
    root = copy_repository(tmp_path)
    corrupted = add_version(root, "fashion-cnn", 2)
    with (corrupted / "model.onnx").open("r+b") as f:
        f.seek(200)
        f.write(b"\x00garbage\x00")
    drifted = add_version(root, "breast-cancer-ann", 2)
    card = json.loads((drifted / "model.json").read_text())
    card["reference"][0]["outputs"][1]["data"][0] += 0.5  # outputs no longer reproduce
    (drifted / "model.json").write_text(json.dumps(card))
    unreadable = add_version(root, "vowels-lstm", 2)
    (unreadable / "model.json").write_text("{broken")

    with TestClient(create_app(Settings(model_repository=root, prediction_log=False))) as client:
        for name in ("fashion-cnn", "breast-cancer-ann", "vowels-lstm"):
            assert client.get(f"/v2/models/{name}").json()["versions"] == ["1"]
            assert client.get(f"/v2/models/{name}/versions/2").status_code == 404
        assert client.get("/v2/health/ready").status_code == 200
        metrics = client.get("/metrics").text
    for model, reason in (
        ("fashion-cnn", "sha256_mismatch"),
        ("breast-cancer-ann", "reference_mismatch"),
        ("vowels-lstm", "invalid_card"),
    ):
        assert (
            metric_value(
                metrics, f'nnserve_model_load_failures_total{{model="{model}",reason="{reason}"}}'
            )
            == 1
        )
    assert metric_value(metrics, "nnserve_models_loaded ") == len(scan(MODELS))
    assert 'nnserve_model_info{dataset="fashion-mnist"' in metrics


def test_a_model_with_no_good_version_is_not_ready_but_others_serve(tmp_path: Path) -> None:
    root = copy_repository(tmp_path)
    card = json.loads((root / "fashion-cnn" / "1" / "model.json").read_text())
    card["onnx_sha256"] = "0" * 64
    (root / "fashion-cnn" / "1" / "model.json").write_text(json.dumps(card))
    with TestClient(create_app(Settings(model_repository=root, prediction_log=False))) as client:
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503 and "fashion-cnn" in ready.json()["error"]
        r = client.get("/v2/models/fashion-cnn/ready")
        assert r.status_code == 503 and "not ready" in r.json()["error"]
        assert client.get("/v2/models/breast-cancer-ann/ready").status_code == 200
        serving = sorted(set(scan(MODELS)) - {"fashion-cnn"})
        assert client.get("/v1/models").json() == {"models": serving}


def test_an_empty_or_missing_repository_is_not_ready(tmp_path: Path) -> None:
    for root in (tmp_path, tmp_path / "missing"):
        with TestClient(
            create_app(Settings(model_repository=root, prediction_log=False))
        ) as client:
            assert client.get("/v2/health/live").status_code == 200
            assert client.get("/v2/health/ready").status_code == 503


def test_the_service_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from service.app import create_app\n"
        "from service.settings import Settings\n"
        "import service.__main__\n"
        "import tempfile\n"
        "settings = Settings(model_repository='models', data_dir=tempfile.mkdtemp())\n"
        "with TestClient(create_app(settings)) as c:\n"
        "    assert c.get('/v2/health/ready').status_code == 200\n"
        "    c.post('/v1/models/breast-cancer-ann:predict', json={'instances': [[1.0] * 30]})\n"
        "    import time\n"
        "    for _ in range(100):  # the log writer commits in batches, shortly after\n"
        "        if 'nnserve_prediction_log_written_total 1.0' in c.get('/metrics').text:\n"
        "            break\n"
        "        time.sleep(0.05)\n"
        "    else:\n"
        "        raise AssertionError('the prediction was not logged')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training'))\n"
        "print('LOADED', loaded)\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
