"""The gRPC edge's parts in-process: the compiled proto is current and wire-compatible with
Triton's, its private descriptor pool coexists with a client's generated module, the codec
checks what the REST codec checks, and status codes come from the one error table."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pytest

from service import errors as e
from service.grpc import codec
from service.grpc.compiled import COMPILED
from service.grpc.descriptor import SERVICE, compile_proto, methods
from service.grpc.status import code_of
from service.http.errors import status_of
from service.protocol.errors import CODES
from service.runtime.model import ServedModel
from tests.support.paths import MODELS
from tests.unit.service.test_layers import MODULES

METHODS = methods()


@pytest.fixture(scope="module")
def ann() -> ServedModel:
    return ServedModel.load(MODELS / "breast-cancer-ann" / "1")


def test_the_committed_descriptor_is_inference_proto_compiled() -> None:
    assert compile_proto() == "".join(COMPILED.split())


Shape = dict[str, list[tuple[str, int, int, int, str]]]


def shape_of(messages: list[Any]) -> Shape:
    """Every field (name, number, type, label, message type) of these message descriptors and
    of the messages they contain."""
    found: Shape = {}
    todo = list(messages)
    while todo:
        message = todo.pop()
        if message.full_name in found:
            continue
        found[message.full_name] = sorted(
            (f.name, f.number, f.type, f.label, f.message_type.full_name if f.message_type else "")
            for f in message.fields
        )
        todo += [f.message_type for f in message.fields if f.message_type is not None]
    return found


def tritons_shape() -> tuple[str, Shape]:
    """In a fresh process: tritonclient's generated module, with the server's messages built
    beside it (its module and KServe's cannot share a process; ours shares one with either)."""
    from tritonclient.grpc import service_pb2

    assert methods()  # the server's own pool, in a process with Triton's module in the default
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    wanted = [m for m in service.methods if m.name in METHODS]
    return service.full_name, shape_of(
        [m.input_type for m in wanted] + [m.output_type for m in wanted]
    )


def test_messages_match_tritons_field_for_field() -> None:
    """Same service, message names, field numbers and types as Triton's generated module;
    and the server's pool coexists with KServe's generated module in this process."""
    import kserve.protocol.grpc.grpc_predict_v2_pb2  # noqa: F401  (inference.* in the default pool)

    ours = shape_of(
        [m.request.DESCRIPTOR for m in METHODS.values()]
        + [m.response.DESCRIPTOR for m in METHODS.values()]
    )
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        service, theirs = pool.submit(tritons_shape).result(timeout=120)
    assert service == SERVICE
    assert ours == theirs


def _request(batch: np.ndarray, datatype: str = "FP32", raw: bool = True):  # type: ignore[no-untyped-def]
    request = METHODS["ModelInfer"].request(model_name="breast-cancer-ann")
    tensor = request.inputs.add(name="features", datatype=datatype, shape=batch.shape)
    if raw:
        request.raw_input_contents.append(batch.tobytes())
    else:
        getattr(tensor.contents, codec.CONTENTS[datatype]).extend(batch.ravel().tolist())
    return request


def test_raw_and_typed_contents_decode_to_the_same_batch(ann: ServedModel) -> None:
    rows = np.random.default_rng(0).uniform(1, 100, (3, 30)).astype(np.float32)
    raw, wanted = codec.decode(_request(rows), ann)
    typed, _ = codec.decode(_request(rows, raw=False), ann)
    as_int, _ = codec.decode(_request(rows.astype(np.int32), "INT32", raw=False), ann)
    np.testing.assert_array_equal(raw, rows)
    np.testing.assert_array_equal(typed, rows)
    np.testing.assert_array_equal(as_int, rows.astype(np.int32).astype(np.float32))
    assert wanted == ann.output_names


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda r: setattr(r.inputs[0], "name", "pixels"), "unknown input 'pixels'"),
        (
            lambda r: (r.inputs[0].shape.__setitem__(1, 29), r.raw_input_contents.pop()),
            "contents.fp32_contents",  # no raw contents: typed ones expected, none there
        ),
        (lambda r: r.inputs[0].shape.__setitem__(0, 2), "shape [2, 30] of FP32 needs 240"),
        (lambda r: setattr(r.inputs[0], "datatype", "BYTES"), "datatype 'BYTES'"),
        (lambda r: setattr(r.inputs[0], "datatype", "FP64"), "FP64 needs 720 bytes, got 360"),
        (lambda r: r.raw_input_contents.append(b"x"), "2 raw_input_contents"),
        (lambda r: r.outputs.add(name="nope"), "unknown output 'nope'"),
        (lambda r: r.inputs.add(name="features"), "exactly one input"),
    ],
)
def test_bad_requests_say_what_was_expected(ann: ServedModel, change, says: str) -> None:  # type: ignore[no-untyped-def]
    request = _request(np.ones((3, 30), np.float32))
    change(request)
    with pytest.raises(e.InvalidInput) as info:
        codec.decode(request, ann)
    message = info.value.message
    assert says in message, message


def test_encode_answers_raw_little_endian_outputs(ann: ServedModel) -> None:
    rows = np.ones((2, 30), np.float32)
    outputs = ann.run(rows)
    response = METHODS["ModelInfer"].response()
    codec.encode(response, ann, "id-1", ["probabilities"], outputs)
    assert (response.model_name, response.model_version, response.id) == (
        "breast-cancer-ann",
        "1",
        "id-1",
    )
    (out,) = response.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("probabilities", "FP32", [2, 2])
    got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 2)
    np.testing.assert_array_equal(got, outputs[ann.output_names.index("probabilities")])


def test_status_codes_and_http_statuses_come_from_one_table() -> None:
    import grpc

    for kind, http, name, _ in CODES:
        error = kind("x") if kind is not e.Overloaded else e.Overloaded("x", 1)
        assert code_of(error) == (grpc.StatusCode[name], http)
        assert status_of(error) == http
    assert code_of(e.NNServeError("bug")) == (grpc.StatusCode.INTERNAL, 500)


def test_edges_do_not_import_each_other() -> None:
    for module, imported in MODULES.items():
        for this, other in (("service.grpc", "service.http"), ("service.http", "service.grpc")):
            if module.startswith(this):
                assert not any(m.startswith(other) for m in imported), module
