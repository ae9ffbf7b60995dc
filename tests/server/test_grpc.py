"""gRPC (Open Inference Protocol, ``inference.GRPCInferenceService``) against a real nnserve
on 127.0.0.1, with the official Triton client, unmodified: two worker processes bound to the
one gRPC port (SO_REUSEPORT), every committed model, errors as status codes from the one
table, the management token in metadata, metrics labelled ``grpc``, and a SIGTERM drain."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelrepo import MODEL_FILE, read_card, scan
from tests.support.onnx_helpers import as_array, session
from tests.support.paths import MODELS
from tests.support.server import Server, free_port, running_server, wait_for

ADMIN = "grpc-admin-token"
MODEL_NAMES = sorted(scan(MODELS))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int]]:
    grpc_port = free_port()
    with running_server(
        MODELS,
        tmp_path_factory.mktemp("grpc"),
        NNSERVE_GRPC_PORT=str(grpc_port),
        NNSERVE_WORKERS="2",
        NNSERVE_ADMIN_TOKEN=ADMIN,
    ) as server:
        wait_for(lambda: len(_grpc_workers(server)) == 2, timeout=60)
        yield server, grpc_port


def _grpc_workers(server: Server) -> set[str]:
    """Worker processes that logged their gRPC server listening (each binds the port)."""
    return set(
        re.findall(
            r"gRPC \(inference\.GRPCInferenceService\) on \S+, worker process (\d+)", server.logs()
        )
    )


@pytest.fixture(scope="module")
def clean() -> Iterator[ProcessPoolExecutor]:
    """A process of its own for the Triton client: its generated module registers
    ``inference.*`` in protobuf's default pool, and so does KServe's (imported by other tests
    of the same run, tests/deploy/test_kubernetes.py): those two client modules cannot share a
    process. The server's own messages can share one with either (``test_grpc_codec.py``)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def run(pool: ProcessPoolExecutor, check: Callable[..., Any], *args: Any) -> Any:
    return pool.submit(check, *args).result(timeout=180)


def triton(port: int):  # type: ignore[no-untyped-def]
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")


def newest(name: str) -> str:
    """The newest committed version of ``name`` (the one served)."""
    return str(scan(MODELS)[name][-1])


def reference(name: str) -> np.ndarray:
    """Real inputs of ``name``: its card's reference batch."""
    return as_array(read_card(MODELS / name / newest(name)).reference[0].inputs[0])


def direct(name: str, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of ``name`` for ``batch``, from onnxruntime directly."""
    folder = MODELS / name / newest(name)
    sess = session(folder / MODEL_FILE)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: batch}), strict=True))


def infer_input(name: str, batch: np.ndarray, datatype: str = "FP32"):  # type: ignore[no-untyped-def]
    import tritonclient.grpc as grpcclient

    input_name = read_card(MODELS / name / newest(name)).inputs[0].name
    tensor = grpcclient.InferInput(input_name, list(batch.shape), datatype)
    tensor.set_data_from_numpy(batch)
    return tensor


def status_of(call) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), str(info.value.message())


def test_every_worker_serves_the_one_grpc_port(served: tuple[Server, int]) -> None:
    assert len(_grpc_workers(served[0])) == 2


def _health(port: int) -> None:
    client = triton(port)
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "nnserve" and "model_repository" in meta["extensions"]


def test_health_and_server_metadata(served: tuple[Server, int], clean: ProcessPoolExecutor) -> None:
    run(clean, _health, served[1])


def _metadata(port: int, name: str) -> None:
    client = triton(port)
    version = newest(name)
    card = read_card(MODELS / name / version)
    meta = client.get_model_metadata(name, as_json=True)
    assert meta["name"] == name and meta["versions"] == [version]
    assert [i["name"] for i in meta["inputs"]] == [t.name for t in card.inputs]
    assert [int(d) for d in meta["inputs"][0]["shape"]] == card.inputs[0].shape
    assert [o["name"] for o in meta["outputs"]] == [t.name for t in card.outputs]
    assert client.is_model_ready(name) and client.is_model_ready(name, version)
    assert not client.is_model_ready(name, "7")


def _infer(port: int, name: str) -> None:
    import tritonclient.grpc as grpcclient

    client = triton(port)
    batch = reference(name)
    for sample in (batch[:1], batch):
        result = client.infer(name, [infer_input(name, sample)], request_id="grpc-1")
        for output, want in direct(name, sample).items():
            np.testing.assert_allclose(result.as_numpy(output), want, rtol=1e-5, atol=1e-6)
        assert result.get_response().id == "grpc-1"
    first, *others = direct(name, batch)
    only = [grpcclient.InferRequestedOutput(first)]
    version = newest(name)
    result = client.infer(name, [infer_input(name, batch)], outputs=only, model_version=version)
    assert result.as_numpy(first) is not None and result.get_response().model_version == version
    assert all(result.as_numpy(other) is None for other in others)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_metadata_readiness_and_infer_single_sample_and_batch(
    served: tuple[Server, int], clean: ProcessPoolExecutor, name: str
) -> None:
    run(clean, _metadata, served[1], name)
    run(clean, _infer, served[1], name)


def test_typed_contents_and_the_servers_own_messages(served: tuple[Server, int]) -> None:
    """Values in ``contents.fp32_contents`` rather than raw bytes; the request is built from
    the server's own descriptor pool (no client's generated module needed)."""
    import grpc

    from service.grpc.descriptor import SERVICE, methods

    infer = methods()["ModelInfer"]
    batch = reference("breast-cancer-ann")
    request = infer.request(model_name="breast-cancer-ann")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=batch.shape)
    tensor.contents.fp32_contents.extend(batch.ravel().tolist())
    with grpc.insecure_channel(f"127.0.0.1:{served[1]}") as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/ModelInfer",
            request_serializer=infer.request.SerializeToString,
            response_deserializer=infer.response.FromString,
        )
        reply = call(request, timeout=10)
        tensor.contents.fp32_contents.append(1.0)  # one value too many
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=10)
    names = [o.name for o in reply.outputs]
    got = np.frombuffer(reply.raw_output_contents[names.index("probabilities")], "<f4")
    want = direct("breast-cancer-ann", batch)["probabilities"]
    np.testing.assert_allclose(got.reshape(len(batch), -1), want, rtol=1e-5, atol=1e-6)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "fp32_contents" in str(info.value.details())


def _errors(port: int) -> None:
    client = triton(port)
    images = reference("fashion-cnn")
    code, text = status_of(
        lambda: client.infer("no-such-model", [infer_input("fashion-cnn", images)])
    )
    assert code == "StatusCode.NOT_FOUND" and "no-such-model" in text
    code, text = status_of(
        lambda: client.infer("fashion-cnn", [infer_input("fashion-cnn", images[:, :20])])
    )
    assert code == "StatusCode.INVALID_ARGUMENT"
    assert "'images'" in text and "[N, 28, 28]" in text and "[4, 20, 28]" in text
    code, text = status_of(
        lambda: client.infer("fashion-cnn", [infer_input("fashion-cnn", images > 0, "BOOL")])
    )
    assert code == "StatusCode.INVALID_ARGUMENT" and "datatype 'BOOL'" in text
    code, text = status_of(  # FP32 bytes declared as FP64: half the bytes the shape needs
        lambda: client.infer("fashion-cnn", [_mislabelled(images)])
    )
    assert code == "StatusCode.INVALID_ARGUMENT" and "FP64" in text and "bytes" in text
    code, _ = status_of(lambda: client.get_model_metadata("no-such-model"))
    assert code == "StatusCode.NOT_FOUND"


def test_errors_are_status_codes_from_the_table(
    served: tuple[Server, int], clean: ProcessPoolExecutor
) -> None:
    run(clean, _errors, served[1])


def _mislabelled(images: np.ndarray):  # type: ignore[no-untyped-def]
    tensor = infer_input("fashion-cnn", images)
    tensor._input.datatype = "FP64"  # what a client that mixes up its dtypes would send
    return tensor


def _management(port: int) -> None:
    client = triton(port)
    code, _ = status_of(lambda: client.get_model_repository_index())
    assert code == "StatusCode.UNAUTHENTICATED"
    code, _ = status_of(
        lambda: client.unload_model("vowels-lstm", headers={"authorization": "Bearer wrong"})
    )
    assert code == "StatusCode.UNAUTHENTICATED"
    index = client.get_model_repository_index(
        headers={"authorization": f"Bearer {ADMIN}"}, as_json=True
    )
    assert {(m["name"], m["state"]) for m in index["models"]} >= {
        (name, "READY") for name in MODEL_NAMES
    }


def test_management_needs_the_admin_token(
    served: tuple[Server, int], clean: ProcessPoolExecutor
) -> None:
    run(clean, _management, served[1])


def _one_good_one_bad(port: int) -> None:
    client = triton(port)
    client.infer("fashion-cnn", [infer_input("fashion-cnn", reference("fashion-cnn"))])
    status_of(lambda: client.infer("fashion-cnn", [infer_input("fashion-cnn", np.zeros((1, 3)))]))


def test_metrics_label_the_protocol(served: tuple[Server, int], clean: ProcessPoolExecutor) -> None:
    run(clean, _one_good_one_bad, served[1])
    text = httpx.get(f"{served[0].url}/metrics", timeout=10).text
    for code in ("200", "400"):
        pattern = (
            r'nnserve_requests_total\{code="' + code + r'",model="fashion-cnn",protocol="grpc",'
            r'version="1"\} ([0-9.]+)'
        )
        assert float(re.search(pattern, text).group(1)) >= 1  # type: ignore[union-attr]
    assert 'nnserve_request_duration_seconds_count{model="fashion-cnn",protocol="grpc"' in text


def _unload_and_load(port: int) -> None:
    client = triton(port)
    admin = {"authorization": f"Bearer {ADMIN}"}
    client.unload_model("vowels-lstm", headers=admin)
    # every worker follows the repository's desired state: ask until both have unloaded
    wait_for(lambda: all(not client.is_model_ready("vowels-lstm") for _ in range(6)), 20)
    code, _ = status_of(
        lambda: client.infer("vowels-lstm", [infer_input("vowels-lstm", reference("vowels-lstm"))])
    )
    assert code == "StatusCode.UNAVAILABLE"
    client.load_model("vowels-lstm", headers=admin)
    wait_for(lambda: all(client.is_model_ready("vowels-lstm") for _ in range(6)), 20)


def test_unload_and_load_over_grpc(served: tuple[Server, int], clean: ProcessPoolExecutor) -> None:
    run(clean, _unload_and_load, served[1])


def _calls_across_sigterm(port: int, pid: int) -> tuple[list[float], float]:
    """8 calls of 1,024 images each; SIGTERM to the service while they are in flight."""
    client = triton(port)
    images = np.resize(reference("fashion-cnn"), (1024, 28, 28)).astype(np.float32)
    client.infer("fashion-cnn", [infer_input("fashion-cnn", images[:1])])  # connected
    finished: list[float] = []
    lock = threading.Lock()

    def one() -> None:
        client.infer("fashion-cnn", [infer_input("fashion-cnn", images)], client_timeout=60)
        with lock:
            finished.append(time.monotonic())

    with ThreadPoolExecutor(8) as pool:
        calls = [pool.submit(one) for _ in range(8)]
        time.sleep(0.3)  # every call sent; 8 x 1024 images take the worker a second or more
        stopped = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        for call in calls:
            call.result(timeout=60)  # answered, not cancelled
    client.close()
    return finished, stopped


def test_sigterm_drains_calls_in_flight(tmp_path: Path, clean: ProcessPoolExecutor) -> None:
    """Calls in flight when SIGTERM arrives are answered before the worker exits."""
    grpc_port = free_port()
    with running_server(
        MODELS,
        tmp_path,
        NNSERVE_GRPC_PORT=str(grpc_port),
        NNSERVE_WORKERS="1",
        NNSERVE_MAX_QUEUE_SIZE="16384",
    ) as server:
        finished, stopped = run(clean, _calls_across_sigterm, grpc_port, server.process.pid)
        assert server.process.wait(timeout=60) == 0
    assert len(finished) == 8 and max(finished) > stopped
