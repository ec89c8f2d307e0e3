"""The engine depends one way: shared types and file readers at the bottom, family adapters above them, the
family registry and the loading entry points above the adapters, and nothing of the pack above the engine
(nodes, host, runner) imported by it. Read from the source, function-level imports included.

Family branches: outside ``engine/families/`` no module may name a family (compare a family id, or import a
particular adapter module or its objects); what differs between families is a capability the adapter declares."""

from __future__ import annotations

import ast
import os
import re

PACK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "custom_nodes", "diffusers_stages")
ENGINE = os.path.join(PACK, "engine")
FAMILY_IDS = ("sd15", "sdxl", "sd3", "flux")
ADAPTERS = ("stable_diffusion", "stable_diffusion_xl", "sd3", "flux")  # engine/families/<adapter>.py
ADAPTER_OBJECTS = re.compile(r"^(STABLE_DIFFUSION(_XL|_3)?|FLUX|\w+Family)$")


def module_name(path: str) -> str:
    relative = os.path.relpath(path, PACK)[:-3].replace(os.sep, ".")
    return relative[: -len(".__init__")] if relative.endswith(".__init__") else relative


def imports_of(path: str) -> list[tuple[str, list[str], int]]:
    """(absolute module inside the pack or outside it, imported names, line) for every import in the file."""
    package = module_name(path) if path.endswith("__init__.py") else module_name(path).rpartition(".")[0]
    tree = ast.parse(open(path, encoding="utf-8").read())
    type_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If) and
                 getattr(node.test, "id", None) == "TYPE_CHECKING" for inner in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:  # annotations only: never imported at run time
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [alias.name for alias in node.names]
            folder = os.path.join(PACK, *target.split("."))
            submodules = [name for name in names if os.path.isfile(os.path.join(folder, f"{name}.py"))]
            found.extend((f"{target}.{name}", [], node.lineno) for name in submodules)  # from . import a_module
            if len(submodules) < len(names):
                found.append((target, [n for n in names if n not in submodules], node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
    return found


def engine_files() -> list[str]:
    return [os.path.join(root, f) for root, _, files in os.walk(ENGINE) for f in files if f.endswith(".py")]


def known_modules() -> set[str]:
    return {module_name(path) for path in engine_files()}


def edges() -> dict[str, set[str]]:
    modules = known_modules()
    graph = {}
    for path in engine_files():
        source = module_name(path)
        graph[source] = {target for target, _, _ in imports_of(path) if target in modules and target != source}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def test_no_import_cycle_inside_the_engine():
    assert cycles(edges()) == []


def test_the_engine_imports_nothing_above_it():
    above = ("diffusers_stages.nodes", "diffusers_stages.host", "diffusers_stages.runner", "diffusers_stages.tiny",
             "comfy", "folder_paths", "server", "execution")
    wrong = [f"{module_name(path)}:{line} imports {target}" for path in engine_files()
             for target, _, line in imports_of(path) if target.startswith(above) or target in ("nodes",)]
    assert wrong == []


def family_branches(path: str) -> list[str]:
    """Where a module outside the adapters names a family: an adapter module or object imported, or a family id
    compared or looked up."""
    found = []
    for target, names, line in imports_of(path):
        adapter = target.rpartition(".")[2]
        if ".engine.families." in f".{target}." and adapter in ADAPTERS:
            found.append(f"line {line}: imports the {adapter} adapter")
        found.extend(f"line {line}: imports {name}" for name in names if ADAPTER_OBJECTS.match(name))
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in FAMILY_IDS:
            found.append(f"line {node.lineno}: the family id '{node.value}'")
    return found


def test_no_family_branch_outside_the_adapters():
    outside = [p for p in engine_files() if os.sep + "families" + os.sep not in p]
    outside += [os.path.join(root, f) for sub in ("nodes", "runner") for root, _, files in
                os.walk(os.path.join(PACK, sub)) for f in files if f.endswith(".py")]
    outside.append(os.path.join(PACK, "host.py"))
    wrong = {module_name(p): found for p in outside if (found := family_branches(p))}
    assert wrong == {}


def test_the_rules_catch_what_they_are_for(tmp_path):
    """The checks themselves: a cycle and a family branch are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    bad = tmp_path / "bad.py"
    bad.write_text("from .families.flux import FLUX\nif family.id == 'sdxl':\n    pass\n")
    assert len(family_branches(str(bad))) >= 2


def test_host_holder_is_named_after_the_modules_it_holds():
    """ComfyUI logs "Requested to load <class of the patched model>": our holder carries the modules' class names."""
    import torch

    from diffusers_stages.host import holder_of

    holder = holder_of([torch.nn.Linear(2, 2), torch.nn.Conv2d(1, 1, 1)])
    assert type(holder).__name__ == "Linear+Conv2d"
    assert isinstance(holder.wrapped_0, torch.nn.Linear) and isinstance(holder.wrapped_1, torch.nn.Conv2d)
