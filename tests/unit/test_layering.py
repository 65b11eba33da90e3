"""The package's layering is a contract: dependencies run one way (orchestration → stages → workers,
engines, store → pure cores → config), and nothing imports in a cycle.

Every `mmc_ray` import is read from the source (function-level and `TYPE_CHECKING` imports too, since
a lazy import is still a dependency), each module is mapped to its unit (a subpackage, or a top-level
module), and every edge between units must be in `MAY_IMPORT`. Change the table only with the design
(`../shared/DESIGN.md`, "Package layout")."""

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mmc_ray"

LEAVES = {"config", "schemas", "io", "images", "seeding", "dashboard_metrics", "ray_runtime", "engine_protocol", "background"}
PURE_CORES = {"tasks", "mcts", "critique", "rl"}
# unit -> the units it may import (itself always allowed). Leaves import nothing of ours.
MAY_IMPORT: dict[str, set[str]] = {
    **{leaf: set() for leaf in LEAVES},
    "tasks": {"io", "schemas", "images", "engine_protocol"},
    "mcts": {"config", "tasks"},
    "critique": {"tasks", "engine_protocol"},
    "rl": {"critique"},
    "models": {"config", "tasks"},
    "store": {"io", "schemas"},
    "engines": {"config", "engine_protocol", "seeding", "models", "tasks", "critique"},
    "workers": {"config", "engine_protocol", "engines", "tasks", "critique", "schemas", "ray_runtime"},
    "train": {"config", "dashboard_metrics", "ray_runtime", "background", "models", "tasks", "critique", "store"},
    "refine": {"config", "engine_protocol", "dashboard_metrics", "schemas", "seeding", "tasks", "critique", "store"},
    "eval": {"store", "tasks"},
    "stages": {*LEAVES, *PURE_CORES, "engines", "workers", "store", "refine", "eval"},
    "serve": {"config", "engine_protocol", "dashboard_metrics", "ray_runtime", "seeding", "images", "critique", "engines"},
    "orchestration": {*LEAVES, *PURE_CORES, "models", "engines", "workers", "store", "train", "refine", "eval",
                      "stages"},
    "cli": {"config", "ray_runtime", "models", "store", "orchestration", "serve"},
    "__init__": set(),
    "errors": set(),
}
ANYONE_MAY_IMPORT = {"__init__", "errors"}  # the package's `__version__`; the `UserError` family


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path, module: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "mmc_ray")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "mmc_ray":
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for target in imports_of(path, module):
            # `from mmc_ray.x import y` may name a submodule y: count the module actually imported
            graph[module].add(target if target in modules else target.rsplit(".", 1)[0])
    return graph


def test_every_unit_is_in_the_table():
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units <= MAY_IMPORT.keys(), f"units missing from MAY_IMPORT: {sorted(units - MAY_IMPORT.keys())}"


def test_imports_follow_the_layering():
    wrong = sorted(f"{a} imports {b}" for a, targets in import_graph().items() for b in targets
                   if unit_of(b) != unit_of(a) and unit_of(b) not in MAY_IMPORT[unit_of(a)] | ANYONE_MAY_IMPORT)
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target == module or target == "mmc_ray":
                continue
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """Guard the guard: a function-level import counts, and a relative import resolves."""
    pkg = tmp_path / "mmc_ray" / "tasks"
    pkg.mkdir(parents=True)
    source = pkg / "example.py"
    source.write_text("def f():\n    from mmc_ray.engines.factory import build\nfrom .problem import Problem\n")
    assert imports_of(source, "mmc_ray.tasks.example") == {"mmc_ray.engines.factory", "mmc_ray.tasks.problem"}
