"""The layout's rules, read off the source: arrows run jobs -> pipeline -> crn, never back.

    .venv/bin/python -m pytest tests/test_layout.py -q

- `crn/` is plain PyTorch: it imports no Ray, MLflow, pyarrow, `pipeline` or `jobs`;
- `pipeline/` never imports `jobs/`;
- no import cycle between the project's modules (lazy imports inside functions count too);
- every file in `jobs/` is an entry point: a `main(argv)` in at most 150 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("crn", "pipeline", "jobs")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module an import statement in the file names, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return found


MODULES = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
GRAPH = {name: {i for i in imports_of(path) if i in MODULES and i != name} for name, path in MODULES.items()}


def test_crn_is_plain_pytorch():
    forbidden = ("ray", "mlflow", "pyarrow", "pipeline", "jobs", "s3fs", "boto3")
    for name, path in MODULES.items():
        if name.startswith("crn"):
            bad = sorted(i for i in imports_of(path) if i.split(".")[0] in forbidden)
            assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_pipeline_never_imports_jobs():
    for name, path in MODULES.items():
        if name.startswith("pipeline"):
            bad = sorted(i for i in imports_of(path) if i.split(".")[0] == "jobs")
            assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_no_import_cycles():
    # A package's __init__ is imported on the way to its modules; the edges between modules are what count.
    graph = {name: {m for m in edges if not MODULES[m].name == "__init__.py"} for name, edges in GRAPH.items()}
    visiting, done, cycles = set(), set(), []

    def visit(node: str, trail: list[str]) -> None:
        if node in done:
            return
        if node in visiting:
            cycles.append(trail[trail.index(node):] + [node])
            return
        visiting.add(node)
        for nxt in sorted(graph[node]):
            visit(nxt, trail + [node])
        visiting.discard(node)
        done.add(node)

    for name in sorted(graph):
        visit(name, [])
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("path", sorted((REPO / "jobs").glob("*.py")), ids=lambda p: p.name)
def test_every_job_file_is_a_short_entry_point(path):
    if path.name == "__init__.py":
        return
    tree = ast.parse(path.read_text())
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert mains and [a.arg for a in mains[0].args.args] == ["argv"], f"{path.name}: no main(argv)"
    assert len(path.read_text().splitlines()) <= 150, f"{path.name} is longer than 150 lines"


# ---- one way to do each thing: read off the source as well ----

def calls_named(path: Path) -> set[str]:
    """The names every call in the file calls: `f(...)` gives f, `x.f(...)` gives f."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else "")
    return names


def modules_calling(name: str) -> set[str]:
    return {module for module, path in MODULES.items() if name in calls_named(path)}


def test_only_the_store_opens_store_parts():
    # Store.files lists the Parquet parts; whoever needs rows asks the store (or its row reader).
    assert modules_calling("files") <= {"pipeline.data.store", "pipeline.data.rows"}
    parquet_readers = {name for name in MODULES if "pyarrow.parquet" in imports_of(MODULES[name])}
    # The store reads its parts, the shard writer writes them, the integrity checks and the
    # verify command read their footers and bytes; synthesis reads its own manifest.
    assert parquet_readers <= {"pipeline.data.store", "pipeline.data.rows", "pipeline.data.shards",
                               "pipeline.data.integrity", "pipeline.data.verify",
                               "pipeline.synthesis.outputs"}, parquet_readers


def test_one_function_opens_a_model():
    defined = {name for name, path in MODULES.items()
               if any(isinstance(n, ast.FunctionDef) and n.name == "open_model" for n in ast.walk(ast.parse(path.read_text())))}
    assert defined == {"pipeline.registry.models"}
    # Rebuilding a generator from a checkpoint, and finding and downloading its file: the
    # registry's model module (and the MLflow face it logs), nowhere else in the pipeline.
    assert {m for m in modules_calling("model_from_checkpoint") if not m.startswith("crn")} <= {
        "pipeline.registry.models", "pipeline.registry.pyfunc"}
    assert modules_calling("resolve_checkpoint") <= {"pipeline.registry.models", "pipeline.segmenter.file"}
    assert modules_calling("download_artifacts") <= {"pipeline.registry.models"}


def test_library_functions_take_config_objects_not_argv_lists():
    """A stage that runs another builds its config object; only jobs/ parse command lines."""
    for name, path in MODULES.items():
        if name.startswith("pipeline"):
            parsers = {c for c in calls_named(path) if c.startswith("parse_") and c.endswith("_config")}
            assert not parsers, f"{path.relative_to(REPO)} parses a command line: {sorted(parsers)}"


def test_scheme_tests_and_test_presets_live_in_one_place():
    for name, path in MODULES.items():
        text = path.read_text()
        if name != "pipeline.fs":
            assert '"://"' not in text, f"{path.relative_to(REPO)} parses a URI itself (use pipeline.fs.is_local)"
        assert "crn-chain" not in text, f"{path.relative_to(REPO)} names a test-only preset"
