"""The official Triton HTTP client, unmodified, against a real nnserve on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from tests.support.paths import MODELS
from tests.support.samples import INPUTS, batch_for, direct
from tests.support.server import Server, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(MODELS, tmp_path_factory.mktemp("triton")) as s:
        yield s


@pytest.fixture(scope="module")
def triton(server: Server):  # type: ignore[no-untyped-def]
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    yield client
    client.close()


def test_server_live_and_ready(triton) -> None:  # type: ignore[no-untyped-def]
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.get_server_metadata()["name"] == "nnserve"


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_model_metadata_and_readiness(triton, name: str) -> None:  # type: ignore[no-untyped-def]
    meta = triton.get_model_metadata(name)
    assert meta["name"] == name
    assert meta["inputs"][0]["name"] == INPUTS[name]
    assert triton.is_model_ready(name)
    assert triton.get_model_metadata(name, model_version="1")["versions"] == ["1"]


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("name", sorted(INPUTS))
def test_infer(triton, name: str, binary: bool) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.http as httpclient

    batch = batch_for(name)
    tensor = httpclient.InferInput(INPUTS[name], list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    result = triton.infer(name, [tensor], outputs=outputs, request_id="triton-1")
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), direct(name, batch), rtol=1e-5, atol=1e-6
    )
    assert result.get_response()["id"] == "triton-1"
    # no outputs named: the client asks for every output in binary
    every = triton.infer(name, [tensor])
    assert every.as_numpy("logits").shape == (len(batch), len(direct(name, batch)[0]))
