"""The house rules, read from the source: the import graph has no cycle and no upward edge, config/ and
analysis/ import no ML stack, and experiment file names are spelled only in raysweep/experiment/layout.py.

Every `import` statement counts, function-local ones included (each cycle the layout removed closed through
one). Each checker is also run on a small hand-made case that breaks its rule, so a checker that silently
finds nothing fails here too.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("raysweep", "analysis")
ML_STACK = ("torch", "transformers", "peft", "ray", "bitsandbytes", "deepspeed")

# (importer prefix, forbidden imported prefixes): the floors, from grid.yaml down to the experiment directory
LAYER_RULES = [
    # nothing below the CLI reaches back up into it
    *[(f"raysweep.{floor}", ("raysweep.cli", "raysweep.__main__"))
      for floor in ("config", "sweep", "trial", "adapters", "inputs", "experiment", "offline")],
    ("analysis", ("raysweep.cli", "raysweep.__main__")),
    # validation never needs the training side
    ("raysweep.config", ("raysweep.trial", "raysweep.sweep", "raysweep.offline", "raysweep.inputs", "analysis",
                         *ML_STACK)),
    # adapters are torch code lent to a trial: no Ray, no driver, no CLI, no training loop
    ("raysweep.adapters", ("ray", "raysweep.sweep", "raysweep.trial", "raysweep.offline", "raysweep.config")),
    # the training loop gets resolved values in its config dict, never the config layer or the driver
    ("raysweep.trial", ("raysweep.config", "raysweep.sweep", "raysweep.offline")),
    ("raysweep.inputs", ("raysweep.config", "raysweep.sweep", "raysweep.trial", "raysweep.offline",
                         "raysweep.adapters")),
    ("raysweep.experiment", ("raysweep.config", "raysweep.sweep", "raysweep.trial", "raysweep.offline",
                             "raysweep.adapters", "raysweep.inputs", *ML_STACK)),
    ("raysweep.sweep", ("raysweep.offline",)),
    # analysis reads an experiment directory: raysweep.experiment only (layout + metric names)
    ("analysis", ("raysweep.config", "raysweep.sweep", "raysweep.trial", "raysweep.offline", "raysweep.adapters",
                  "raysweep.inputs")),
]
# the options modules (pydantic only) and the registry are the part of adapters/ that config/ may import
CONFIG_MAY_IMPORT_FROM_ADAPTERS = ("raysweep.adapters", "raysweep.adapters.family", "raysweep.adapters.base")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, tree: ast.AST, is_package: bool, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import statement. `from X import y` counts as an
    import of X.y when that is a module, else of X; relative imports are resolved against `name`."""
    top_level = {id(node) for node in getattr(tree, "body", [])}
    type_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                 for stmt in node.body for inner in ast.walk(stmt)}  # never executed
    out = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                out.append((target if target in known else base, node.lineno, id(node) in top_level))
    return out


def import_graph(files: dict[str, Path]) -> dict[str, list[tuple[str, int, bool]]]:
    known = set(files)
    return {name: imports_of(name, ast.parse(path.read_text()), path.name == "__init__.py", known)
            for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph (a list of nodes, first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_violations(edges: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    problems = []
    for importer, targets in edges.items():
        for target, line, _ in targets:
            for owner, forbidden in LAYER_RULES:
                if within(importer, owner) and any(within(target, f) for f in forbidden):
                    problems.append(f"{importer}:{line} imports {target} (rule: {owner} must not import it)")
            if within(importer, "raysweep.config") and within(target, "raysweep.adapters"):
                allowed = target in CONFIG_MAY_IMPORT_FROM_ADAPTERS or target.endswith(".options")
                if not allowed:
                    problems.append(f"{importer}:{line} imports {target} (config/ may import only the adapters "
                                    "registry and the families' options modules)")
    return problems


def module_level_ml_imports(edges: dict[str, list[tuple[str, int, bool]]], owner: str) -> list[str]:
    return [f"{importer}:{line} imports {target} at module level" for importer, targets in edges.items()
            if within(importer, owner) for target, line, top in targets
            if top and any(within(target, m) for m in ML_STACK)]


def layout_names() -> set[str]:
    """The file and folder names raysweep/experiment/layout.py owns (values of its str constants)."""
    tree = ast.parse((ROOT / "raysweep" / "experiment" / "layout.py").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            value = node.value.value
            if "." in value or value == "train_runs":  # file names, and the one distinctive folder name
                names.add(value)
    return names


def docstring_ids(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def literal_spellings(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) for every string literal (f-string parts included, docstrings not) that contains one of
    `names` as a whole file name."""
    tree = ast.parse(source)
    skip = docstring_ids(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            for name in names:
                text = node.value
                at = text.find(name)
                while at >= 0:
                    before = text[at - 1] if at else " "
                    after = text[at + len(name)] if at + len(name) < len(text) else " "
                    if not (before.isalnum() or before in "_.") and not (after.isalnum() or after == "_"):
                        found.append((node.lineno, name))
                        break
                    at = text.find(name, at + 1)
    return found


# ------------------------------------------------------------------------------------------------ the rules


@pytest.fixture(scope="module")
def edges():
    return import_graph(source_files())


def test_no_import_cycle(edges):
    graph = {name: {t for t, _, _ in targets if t in edges} for name, targets in edges.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_upward_import(edges):
    assert layer_violations(edges) == []


def test_analysis_imports_no_ml_stack_at_module_level(edges):
    assert module_level_ml_imports(edges, "analysis") == []


def test_experiment_file_names_are_spelled_only_in_the_layout():
    names = layout_names()
    assert {"trials.csv", "raysweep.yaml", "bounds.json", "sparsity.csv", "train_runs"} <= names
    found = []
    for name, path in source_files().items():
        if name == "raysweep.experiment.layout":
            continue
        found += [f"{path.relative_to(ROOT)}:{line}: {spelled!r}"
                  for line, spelled in literal_spellings(path.read_text(), names)]
    assert found == []


def test_analysis_names_metrics_through_raysweep_experiment():
    # a metric spelled twice drifts: `analyze --objectives` once named two metrics no trial reports
    from raysweep.experiment import metrics

    names = {v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str) and "/" in v}
    names |= set(metrics.ALL_METRICS)
    found = []
    for name, path in source_files().items():
        if name.startswith("analysis"):
            tree = ast.parse(path.read_text())
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
                      if isinstance(node, ast.Constant) and node.value in names]
    assert found == []


def test_the_graph_sees_every_module_and_function_local_imports(edges):
    # the rules are only as good as the walk: every file is a module Python can find by that name, and an
    # import inside a function counts (the training loop imports the adapters registry inside setup_model)
    for name in source_files():
        assert importlib.util.find_spec(name) is not None, name
    local = {(target, top) for target, _, top in edges["raysweep.trial.loop"]}
    assert ("raysweep.adapters", False) in local
    assert ("raysweep.experiment.metrics", True) in {(t, top) for t, _, top in edges["raysweep.trial.loop"]}


# ------------------------------------------------------------------------- each checker catches what it must


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize(("importer", "target"), [
    ("raysweep.trial.loop", "raysweep.config.schema"),  # the loop re-validating through config
    ("raysweep.config.rules", "raysweep.trial.engines"),  # validation importing the engines
    ("raysweep.config.schema", "torch"),
    ("raysweep.config.schema", "raysweep.adapters.sora.adapter"),  # the torch side of a family
    ("raysweep.offline.estimate", "raysweep.__main__"),  # a harness importing the CLI's parser
    ("raysweep.adapters.lora", "ray.train"),
    ("analysis.load", "raysweep.trial.checkpointing"),
    ("raysweep.inputs.data", "raysweep.config"),
])
def test_the_layer_rules_catch_an_upward_import(importer, target):
    assert layer_violations({importer: [(target, 1, False)]}) != []


def test_the_layer_rules_allow_what_flows_down():
    allowed = {"raysweep.cli.commands": [("raysweep.sweep.driver", 1, False)],
               "raysweep.config.schema": [("raysweep.adapters", 1, True), ("raysweep.adapters.sora.options", 2, True)],
               "raysweep.trial.loop": [("raysweep.adapters", 1, False), ("raysweep.inputs.data", 2, False)],
               "analysis.load": [("raysweep.experiment.layout", 1, True)]}
    assert layer_violations(allowed) == []


def test_a_module_level_torch_import_in_analysis_is_caught():
    tree = ast.parse("import torch\n\ndef f():\n    import ray\n")
    edges = {"analysis.x": imports_of("analysis.x", tree, False, set())}
    assert module_level_ml_imports(edges, "analysis") == ["analysis.x:1 imports torch at module level"]


def test_a_stray_file_name_literal_is_caught_but_not_a_docstring_or_a_longer_name():
    source = ('"""Writes trials.csv."""\n'
              'A = "trials.csv"\n'
              'B = f"{root}/bounds.json"\n'
              'C = "old_trials.csv"\n')
    assert literal_spellings(source, {"trials.csv", "bounds.json"}) == [(2, "trials.csv"), (3, "bounds.json")]
