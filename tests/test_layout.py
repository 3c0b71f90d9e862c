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
