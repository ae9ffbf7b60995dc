"""The service's layers, read from its imports: each package imports only what lies below it
(DESIGN.md §3), nothing below the HTTP edge knows HTTP, and sibling modules of one layer
never import each other (shared helpers live below both)."""

from __future__ import annotations

import ast

import pytest

from service import errors
from tests.support.paths import ROOT

SERVICE = ROOT / "service"
WEB = ("fastapi", "starlette", "uvicorn", "httptools", "h11")

#: package (or top-level module) → the service packages/modules it may import
ALLOWED: dict[str, set[str]] = {
    "observability": {"observability"},
    "errors": set(),
    "context": set(),
    "runtime": {"errors", "observability", "runtime"},
    "repository": {"errors", "observability", "runtime", "repository"},
    "protocol": {"errors", "protocol", "runtime"},
    "dataplane": {"errors", "context", "observability", "repository", "runtime"},
    "settings": {"repository", "runtime", "cpus", "keys"},
    "cpus": set(),
    "keys": set(),
}
#: modules of one layer that must not import each other
SIBLINGS = [
    {"service.protocol.v1", "service.protocol.v2"},
    {
        "service.http.v1",
        "service.http.v2",
        "service.http.repository",
        "service.http.inference",  # the route table the fast path is compiled from
    },
]


def modules() -> dict[str, set[str]]:
    """service module name → the modules it imports (absolute names)."""
    found = {}
    for path in sorted(SERVICE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported |= {f"{node.module}.{a.name}" for a in node.names}
        found[name] = imported
    return found


MODULES = modules()


def layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) in ALLOWED))
def test_each_layer_imports_only_what_lies_below_it(module: str) -> None:
    allowed = ALLOWED[layer(module)]
    reached = {layer(m) for m in MODULES[module] if m.startswith("service.")}
    reached.discard("")  # `from service import __version__`-style imports of the package
    assert reached <= allowed | {layer(module)}, f"{module} imports {sorted(reached - allowed)}"
    web = sorted(m for m in MODULES[module] if m.split(".")[0] in WEB)
    assert not web, f"{module} is below the HTTP edge but imports {web}"


def test_siblings_do_not_import_each_other() -> None:
    for group in SIBLINGS:
        for module in group:
            assert module in MODULES, module
            sideways = {m.rsplit(".", 1)[0] if m not in MODULES else m for m in MODULES[module]}
            assert not (sideways & (group - {module})), f"{module} imports a sibling"


def test_domain_errors_carry_no_transport_codes() -> None:
    for kind in vars(errors).values():
        if isinstance(kind, type) and issubclass(kind, Exception):
            assert not {"status", "status_code", "headers"} & set(vars(kind)), kind
