"""The OpenAPI document: FastAPI's templated paths, and the same operations once more for
every served model (and version) with the exact bodies of its card.

The templated paths (``/v2/models/{model_name}/infer``) stay: they are the protocol as
KServe and clients know it, and what code generators want. Their bodies are the generic
schemas of ``service.protocol.openapi``. A model name in a path parameter cannot choose a body
schema, though, so each operation on ``{model_name}`` is repeated on its concrete path
(``/v2/models/fashion-cnn/infer``, ``.../versions/1/infer``) with the model's own request and
response schemas, components named ``<model>[.<version>].<Kind>``. A fuzzer, or a client
validating its requests, uses those.

The document is built on the first request for it after the served set changed (the registry
calls back on every load, unload and swap; see ``ServiceApp.openapi``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.dataplane import DataPlane
from service.protocol import openapi as bodies
from service.runtime.model import ServedModel

Schema = dict[str, Any]
#: (served model versions by name, oldest first; every model name in the repository)
Catalog = tuple[dict[str, list[ServedModel]], list[str]]
MODEL, VERSION = "{model_name}", "{model_version}"


@dataclass(frozen=True)
class Documented:
    """Which card-derived schemas describe one templated operation."""

    kind: str  # the generic component's name, e.g. V2InferRequest
    request: Callable[[ServedModel], Schema] | None = None
    example: Callable[[ServedModel], Schema | None] | None = None
    response: Callable[[ServedModel, list[int]], Schema] | None = None


_V1 = Documented("V1Predict", bodies.v1_request, bodies.v1_example, bodies.v1_response)
_V2 = Documented("V2Infer", bodies.v2_request, bodies.v2_example, bodies.v2_response)
_META = Documented("V2ModelMetadata", response=bodies.v2_metadata)
_EXPLAIN = Documented("V1Explain", bodies.v1_explain_request, bodies.v1_example)
#: (method, templated path) → its per-model schemas. Other operations on ``{model_name}``
#: are repeated per model as they are (their bodies do not depend on the card).
PER_MODEL: dict[tuple[str, str], Documented] = {
    ("post", "/v1/models/{model_name}:predict"): _V1,
    ("post", "/v1/models/{model_name}/feedback"): Documented("V1Feedback", bodies.v1_feedback),
    ("post", "/v1/models/{model_name}:explain"): _EXPLAIN,
    ("post", "/v1/models/{model_name}/versions/{model_version}:explain"): _EXPLAIN,
    ("post", "/v2/models/{model_name}/infer"): _V2,
    ("post", "/v2/models/{model_name}/versions/{model_version}/infer"): _V2,
    ("get", "/v2/models/{model_name}"): _META,
    ("get", "/v2/models/{model_name}/versions/{model_version}"): _META,
}
#: The generic bodies, for the templated paths (the codecs decode them, not FastAPI).
GENERIC: dict[str, Schema] = {
    "V1PredictRequest": bodies.v1_request(),
    "V1PredictResponse": bodies.v1_response(),
    "V1Feedback": bodies.v1_feedback(),
    "V1ExplainRequest": bodies.v1_explain_request(),
    "V1ExplainResponse": bodies.v1_explain_response(),
    "V2InferRequest": bodies.v2_request(),
    "V2InferResponse": bodies.v2_response(),
}
#: Paths that need a served model; the others (management) are repeated for every model in
#: the repository, unloaded ones included.
_NEEDS_SERVED = ("/v1/", "/v2/models/")


def catalog(plane: DataPlane) -> Catalog:
    """What the document describes: the models ``plane`` serves now, and the repository's."""
    registry = plane.registry
    served = {
        name: [versions[v].model for v in sorted(versions)]
        for name, versions in registry.served.items()
    }
    return served, sorted(registry.found)


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def add_models(
    document: Schema, served: Mapping[str, Sequence[ServedModel]], known: Sequence[str]
) -> None:
    """Add the generic bodies, and the concrete paths of every model in ``known`` (served:
    its versions, oldest first) to FastAPI's ``document``, in place."""
    components: Schema = document.setdefault("components", {}).setdefault("schemas", {})
    components.update(GENERIC)
    templated = {p: item for p, item in document["paths"].items() if MODEL in p}
    for name in sorted(set(known) | set(served)):
        models = list(served.get(name, ()))
        for path, item in templated.items():
            for concrete, model, versions in _concrete(path, name, models):
                document["paths"][concrete] = {
                    method: _operation(
                        operation,
                        name,
                        VERSION in path,
                        PER_MODEL.get((method, path)),
                        model,
                        versions,
                        components,
                    )
                    for method, operation in item.items()
                }


def _concrete(
    path: str, name: str, models: list[ServedModel]
) -> list[tuple[str, ServedModel | None, list[int]]]:
    """(concrete path, the model version it is about, the versions it may answer with)."""
    concrete = path.replace(MODEL, name)
    if VERSION in path:
        return [(concrete.replace(VERSION, str(m.version)), m, [m.version]) for m in models]
    if models:  # the newest version answers
        return [(concrete, models[-1], [m.version for m in models])]
    return [] if path.startswith(_NEEDS_SERVED) else [(concrete, None, [])]


def _operation(
    template: Schema,
    name: str,
    versioned: bool,
    documented: Documented | None,
    model: ServedModel | None,
    versions: list[int],
    components: Schema,
) -> Schema:
    operation = copy.deepcopy(template)
    suffix = f"{name}.{model.version}" if versioned and model is not None else name
    operation["operationId"] = f"{operation.get('operationId', 'op')}__{suffix}"
    operation["tags"] = [f"Model {name}"]
    operation["parameters"] = [p for p in operation.get("parameters", []) if p["in"] != "path"]
    if documented is None or model is None:
        return operation
    if documented.request is not None:
        key = f"{suffix}.{documented.kind}{'Request' if documented.response else ''}"
        components[key] = documented.request(model)
        media = operation["requestBody"]["content"]["application/json"]
        media["schema"] = ref(key)
        example = documented.example(model) if documented.example is not None else None
        if example is not None:
            media["example"] = example
    if documented.response is not None:
        key = f"{suffix}.{documented.kind}{'Response' if documented.request else ''}"
        components[key] = documented.response(model, versions)
        operation["responses"]["200"]["content"]["application/json"]["schema"] = ref(key)
    return operation
