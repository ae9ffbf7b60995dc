"""Property-based fuzzing of the live service from its own OpenAPI document (schemathesis).

A real service (``python -m service``, the shipped models, the admin token set) is fuzzed
operation by operation, the per-model concrete paths included, with bodies that fit the
document (positive) and bodies that do not (negative), management calls with the real token
last (they unload models). Every response must be no 5xx, have a documented status and
content type, and match its documented schema. Afterwards every model is loaded again and
the service must be ready. Bounded: ``FUZZ_EXAMPLES`` cases per operation and mode, no
shrinking, a fixed seed (derandomized), and a total time budget (``FUZZ_BUDGET_S``).

Run it alone: ``.venv/bin/python -m pytest tests/server/test_fuzz.py``; more cases with
``NNSERVE_FUZZ_EXAMPLES=200``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from schemathesis import APIOperation, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.paths import MODELS
from tests.support.server import Server, running_server

pytestmark = [pytest.mark.server, pytest.mark.timeout(600)]

TOKEN = "fuzz-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FUZZ_EXAMPLES = int(os.environ.get("NNSERVE_FUZZ_EXAMPLES", "25"))
FUZZ_BUDGET_S = float(os.environ.get("NNSERVE_FUZZ_BUDGET_S", "300"))


def no_server_error(ctx: CheckContext, response: Response, case: schemathesis.Case) -> None:
    """No 5xx, but the documented ones that are no fault of the service: 504 for a request
    whose own deadline (``X-Request-Timeout-Ms``, e.g. 1 ms) passed, 503 from a management
    call that found a model unloadable."""
    headers = {k.lower() for k in case.headers or {}}
    if response.status_code == 504 and "x-request-timeout-ms" in headers:
        return
    if response.status_code == 503 and "/v2/repository/" in case.operation.label:
        return
    not_a_server_error(ctx, response, case)


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MODEL_NAMES = sorted(p.name for p in MODELS.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with running_server(
        MODELS,
        tmp,
        NNSERVE_ADMIN_TOKEN=TOKEN,
        NNSERVE_POLL_INTERVAL="0",
        NNSERVE_WORKERS="2",  # the document is rebuilt in every worker
        NNSERVE_LOG_LEVEL="warning",
    ) as running:
        yield running


def _order(label: str) -> tuple[bool, str]:
    """Management calls last: they unload models the other operations need."""
    return ("/v2/repository/" in label, label)


def restore(server: Server) -> None:
    """Load every model again (the fuzzer unloads some) and wait for readiness."""
    for name in MODEL_NAMES:
        answer = httpx.post(
            f"{server.url}/v2/repository/models/{name}/load", headers=AUTH, timeout=60
        )
        assert answer.status_code == 200, answer.text
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200


def examples(operation: APIOperation) -> list[SearchStrategy[schemathesis.Case]]:
    """The operation's documented examples (a request from the card's reference batch)."""
    return list(operation.schema.get_strategies_from_examples(operation))


def test_fuzz_every_documented_operation(server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    paths = set(httpx.get(f"{server.url}/openapi.json").json()["paths"])
    for name in MODEL_NAMES:  # the real model names, on concrete paths
        assert f"/v2/models/{name}/infer" in paths and f"/v1/models/{name}:predict" in paths
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()), key=lambda op: _order(op.label)
    )
    deadline = time.monotonic() + FUZZ_BUDGET_S
    failures: dict[str, str] = {}
    statuses: Counter[int] = Counter()
    started = time.monotonic()

    def run(label: str, strategy: SearchStrategy[schemathesis.Case], cases: int) -> None:
        @settings(
            max_examples=cases,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def fuzz(case: schemathesis.Case) -> None:
            if time.monotonic() > deadline:
                statuses[0] += 1  # not sent: out of time
                return
            if label.endswith("(examples)"):
                case.headers = {}  # no generated deadline (a 1 ms one would be a 504)
            response = case.call(headers=AUTH, timeout=30)
            statuses[response.status_code] += 1
            case.validate_response(response, checks=CHECKS, headers=AUTH)
            if label.endswith("(examples)"):  # what the document shows must work
                assert response.status_code == 200, response.text

        try:
            fuzz()
        except Unsatisfiable:  # nothing to negate (no body, no parameters)
            pass
        except (Exception, BaseExceptionGroup) as exc:  # every operation's failure, all told
            failures[label] = str(exc)[:3000]

    try:
        for operation in operations:
            # feedback on an unknown id waits JOIN_WAIT_S for it: fewer of those
            cases = max(FUZZ_EXAMPLES // 6, 2) if "/feedback" in operation.label else FUZZ_EXAMPLES
            shown = examples(operation)
            if shown:
                run(f"{operation.label} (examples)", st.one_of(shown), 3)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if time.monotonic() > deadline:
                    statuses[0] += 1
                    continue
                strategy = operation.as_strategy(generation_mode=mode)
                run(f"{operation.label} ({mode.value})", strategy, cases)
    finally:
        took = time.monotonic() - started
        print(f"fuzz: {len(operations)} operations in {took:.1f}s, statuses {dict(statuses)}")
        restore(server)
    assert not statuses[0], "the fuzz ran out of time: raise NNSERVE_FUZZ_BUDGET_S"
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert statuses[200] and not statuses[500]
    assert "Traceback" not in server.logs()


def test_the_document_follows_loads_and_unloads(server: Server) -> None:
    """Unload a model: its concrete paths leave the document (management ones stay); load
    it: they are back."""
    name = MODEL_NAMES[0]
    answer = httpx.post(f"{server.url}/v2/repository/models/{name}/unload", headers=AUTH)
    assert answer.status_code == 200, answer.text
    try:
        paths = set(httpx.get(f"{server.url}/openapi.json").json()["paths"])
        assert f"/v2/models/{name}/infer" not in paths
        assert f"/v2/repository/models/{name}/load" in paths
    finally:
        restore(server)
    paths = set(httpx.get(f"{server.url}/openapi.json").json()["paths"])
    assert f"/v2/models/{name}/infer" in paths
