"""The import rules of ARCHITECTURE.md, read from the source (every import statement, at module level or inside a
function): which layer may import which, what the training recipe exports, no cycles, and platform modules import at
module level."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("glccl", "pipelines", "sweeps", "cluster", "benchmarks")

# layer -> the top-level packages its modules may import (besides third-party ones)
MAY_IMPORT = {
    "glccl": {"glccl"},
    "pipelines": {"glccl", "pipelines"},
    "sweeps": {"glccl", "pipelines", "sweeps"},
    "cluster": {"glccl", "pipelines", "cluster"},
    "benchmarks": {"glccl", "pipelines", "benchmarks"},
}
# the platform's services: what commands are built from; a service never imports a command
SERVICES = {"pipelines.ray_session", "pipelines.data", "pipelines.run_data", "pipelines.preflight",
            "pipelines.checkpoints",
            "pipelines.tracking", "pipelines.mlflow_model", "pipelines.torch_store", "pipelines.run_record"}
# what other modules may take from the training recipe: the run itself, not helpers
RECIPE = "pipelines.train"
RECIPE_EXPORTS = {"run", "StepCallback"}
# imports across layers that the rules above would refuse, with the reason
LAYER_EXCEPTIONS = {
    ("pipelines.report", "benchmarks.similarity"): "the report's cost columns are the similarity benchmark's own "
    "measurement, so the study and BENCHMARKS.md quote one number measured one way",
}
# third-party imports that stay inside functions, with the reason
LAZY_ALLOWED = {
    "ray.tune.search.optuna": "optuna is an optional dependency: only `search: optuna` sweeps need it",
}
# a module whose cheap import is a feature keeps these imports inside the functions that need them
LAZY_IN_MODULE = {
    "pipelines.data": ({"torch", "glccl.tokenizer", "glccl.encoders.clip", "glccl.encoders", "glccl.search"},
                       "Ray Data decode workers import it and must not pay for torch and open_clip"),
}
NOT_THIRD_PARTY_BLOCKED_IN_LIBRARY = ("ray", "mlflow")
# Ray's private modules, where Ray 2.60 has no public form of what the module needs (ARCHITECTURE.md says why)
PRIVATE_RAY_ALLOWED = {
    "pipelines.ray_session": {"ray._private", "ray._raylet"},
    "pipelines.torch_store": {"ray.train.torch.config"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for top in PROJECT:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, set[str], bool, int]]:
    """(imported module, names taken from it, inside a function, line) of every import statement of a module."""
    tree = ast.parse(path.read_text(), str(path))
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((alias.name, set(), id(node) in in_function, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # `from pkg import mod` imports a module
                full = f"{base}.{alias.name}"
                target = full if full in MODULES else base
                out.append((target, {alias.name} if target == base else set(), id(node) in in_function, node.lineno))
    return out


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _project(mod: str) -> str | None:
    top = mod.split(".")[0]
    return top if top in PROJECT else None


def test_every_project_module_is_seen():
    assert "pipelines.train" in MODULES and "glccl.model" in MODULES and "sweeps.tune" in MODULES
    assert any(t == "glccl.config" for t, *_ in IMPORTS["pipelines.train"])


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_layers_import_only_what_they_may(layer):
    bad = [f"{name}:{line} imports {target}" for name, imps in IMPORTS.items() if name.split(".")[0] == layer
           for target, _, _, line in imps if _project(target) and _project(target) not in MAY_IMPORT[layer]
           and (name, target) not in LAYER_EXCEPTIONS]
    if layer == "glccl":
        bad += [f"{name}:{line} imports {target}" for name, imps in IMPORTS.items() if name.split(".")[0] == "glccl"
                for target, _, _, line in imps if target.split(".")[0] in NOT_THIRD_PARTY_BLOCKED_IN_LIBRARY]
    assert not bad, "\n".join(bad)


def test_services_never_import_commands():
    bad = [f"{name}:{line} imports {target}" for name in SERVICES for target, _, _, line in IMPORTS[name]
           if target.startswith("pipelines.") and target in MODULES and target not in SERVICES]
    assert not bad, "\n".join(bad)


def test_only_the_run_is_taken_from_the_training_recipe():
    bad = []
    for name, path in MODULES.items():
        if name == RECIPE:
            continue
        for target, names, _, line in IMPORTS[name]:
            if target == RECIPE and names - RECIPE_EXPORTS:
                bad.append(f"{name}:{line} takes {sorted(names - RECIPE_EXPORTS)} from {RECIPE}")
        # `from pipelines import train` then `train.<attr>`
        if any(t == RECIPE and not n for t, n, _, _ in IMPORTS[name]):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "train"
                        and node.attr not in RECIPE_EXPORTS):
                    bad.append(f"{name}:{node.lineno} uses train.{node.attr}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph: dict[str, set[str]] = defaultdict(set)
    for name, imps in IMPORTS.items():
        for target, _, _, _ in imps:
            if target in MODULES and target != name:
                graph[name].add(target)
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(MODULES):
        if v not in index:
            visit(v)
    # a package's __init__ that re-exports its own submodules is not a cycle a reader has to follow
    cycles = [c for c in cycles if not all(m.split(".")[0] == "glccl" for m in c)]
    assert not cycles, cycles


def test_platform_modules_import_at_module_level():
    """Imports inside functions hide a module's dependencies (and hid import cycles); the platform has none, apart
    from optional dependencies (LAZY_ALLOWED)."""
    bad = [f"{name}:{line} imports {target} inside a function" for name, imps in IMPORTS.items()
           if name.split(".")[0] != "glccl" for target, _, inside, line in imps
           if inside and target not in LAZY_ALLOWED and target not in LAZY_IN_MODULE.get(name, (set(),))[0]]
    assert not bad, "\n".join(bad)


def _private_ray(target: str, names: set[str]) -> bool:
    parts = target.split(".")
    return parts[0] == "ray" and (any(p.startswith("_") for p in parts) or target == "ray.train.torch.config"
                                  or any(n.startswith("_") for n in names))


def test_only_the_listed_modules_use_private_ray():
    bad = [f"{name}:{line} imports {target} {sorted(names) or ''}" for name, imps in IMPORTS.items()
           for target, names, _, line in imps
           if _private_ray(target, names) and target not in PRIVATE_RAY_ALLOWED.get(name, set())]
    assert not bad, "\n".join(bad)
    used = {(name, target) for name, imps in IMPORTS.items() for target, names, _, _ in imps
            if _private_ray(target, names)}
    for name, targets in PRIVATE_RAY_ALLOWED.items():  # an exception nobody needs any more is dropped from the list
        for target in targets:
            assert (name, target) in used, f"{name} no longer imports {target}: drop it from PRIVATE_RAY_ALLOWED"


def test_the_rules_are_the_documented_ones():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    for layer in MAY_IMPORT:
        assert f"`{layer}/`" in text, layer
    for service in SERVICES:
        assert f"`{service.split('.')[-1]}`" in text, service
    assert "test_architecture.py" in text
    for name in PRIVATE_RAY_ALLOWED:
        assert f"`{name.replace('.', '/')}.py`" in text, name
