"""The package's import graph: no cycles (function-local imports included), no module reaching into
another module's underscore names, and the layering the design promises (the science does not
import the organism or the CLI; the kernel layer does not import the engines)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "python" / "saesteer"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def resolve(mod: str, is_pkg: bool, level: int, target: str | None) -> str:
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(mod: str) -> list[tuple[str, list[str], int]]:
    """``[(imported module, names taken from it, line)]`` of every import statement in ``mod``."""
    path = MODULES[mod]
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("saesteer")]
        elif isinstance(node, ast.ImportFrom):
            src = resolve(mod, is_pkg, node.level, node.module) if node.level else (node.module or "")
            if not src.startswith("saesteer"):
                continue
            names = [a.name for a in node.names]
            subs = [f"{src}.{n}" for n in names if f"{src}.{n}" in MODULES]
            out += [(s, [], node.lineno) for s in subs]  # `from pkg import submodule`
            rest = [n for n in names if f"{src}.{n}" not in MODULES]
            if rest or not subs:
                out.append((src, rest, node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    g = {}
    for mod in MODULES:
        g[mod] = {m for m, _, _ in imports_of(mod) if m in MODULES and m != mod}
    return g


def test_no_import_cycles():
    g = graph()
    # A package's __init__ re-exporting its submodules is not a cycle with them: Python runs the
    # package first. Edges from a submodule to its own ancestors' __init__ are what make cycles.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if m.startswith(n + "."):
                continue  # a submodule importing its package: the package is already running
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_uses_another_modules_underscore_names():
    bad = []
    for mod, path in MODULES.items():
        imported = {}
        for src, names, line in imports_of(mod):
            # saesteer._C is the compiled extension, bound in one place (saesteer._native).
            bad += [f"{mod}:{line} imports {src}.{n}" for n in names
                    if n.startswith("_") and not n.startswith("__") and f"{src}.{n}" != "saesteer._C"]
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):  # `from . import ops` then `ops._x`
            if isinstance(node, ast.ImportFrom):
                for a in node.names:
                    imported[a.asname or a.name] = a.name
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("saesteer"):
                        imported[(a.asname or a.name).split(".")[0]] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                target = imported[node.value.id]
                if target in ("torch", "np") or not any(k.endswith("." + target) or k == target for k in MODULES):
                    continue
                bad.append(f"{mod}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("saesteer.refusal", ("saesteer.organism", "saesteer.cli")),
        ("saesteer.steering", ("saesteer.hf", "saesteer.vllm", "saesteer.refusal", "saesteer.organism", "saesteer.cli")),
        ("saesteer.ops", ("saesteer.sae", "saesteer.hf", "saesteer.steering", "saesteer.refusal", "saesteer.organism")),
        ("saesteer.packed", ("saesteer.",)),
        ("saesteer.intervention", ("saesteer.",)),
        ("saesteer.hf", ("saesteer.refusal", "saesteer.organism", "saesteer.cli", "saesteer.vllm")),
    ],
)
def test_layering(layer, forbidden):
    bad = []
    for mod in MODULES:
        if mod == layer or mod.startswith(layer + "."):
            for src, _, line in imports_of(mod):
                if src != mod and any(src == f or src.startswith(f + ".") or (f.endswith(".") and src.startswith(f)) for f in forbidden):
                    if not (src == layer or src.startswith(layer + ".")):
                        bad.append(f"{mod}:{line} imports {src}")
    assert not bad, "\n".join(bad)


def test_vllm_plugin_imports_neither_bench_nor_refusal():
    """The serving plugin is an adapter on the steering core: the benchmarks (which drive it) and the
    science layer stay outside it."""
    bad = [f"{mod}:{line} imports {src}" for mod in MODULES if mod == "saesteer.vllm" or mod.startswith("saesteer.vllm.")
           for src, _, line in imports_of(mod)
           if any(src == f or src.startswith(f + ".") for f in ("saesteer.bench", "saesteer.refusal"))]
    assert not bad, "\n".join(bad)
