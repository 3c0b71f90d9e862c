"""The docs live in the repository: every relative link resolves, and nothing cites files outside it.

    .venv/bin/python -m pytest -q tests/test_docs.py

- Every relative link in README.md and docs/*.md (`[text](path)`, `![alt](path)`, with or
  without `#anchor`) names a file of the repository, and an anchor into a .md file names one
  of its headings, by GitHub's rule (lowercase, punctuation dropped, spaces to dashes).
- No file of the repository cites the background material that a fresh clone does not have
  (the spec, the stack notes, the shared folder beside the checkout); comments cite docs/.
- Every `docs/<name>.md` or `docs/<name>.md#anchor` cited anywhere in the code exists.
- What the docs name in code spans exists: a repository path (`pipeline/training/recipe.py`)
  is a file or folder, and a dotted name (`pipeline.training.recipe.recipe_for`) is a module,
  or a module whose source mentions the rest of the name.
- Every flag shown with a job in a command (`python jobs/train.py --store ... --steps 300`)
  is one of that job's flags, and docs/jobs.md's table for each job lists exactly its flags.
"""
from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Spelled in pieces so that this file does not cite them itself.
FORBIDDEN = ("crn-spec" + ".md", "stack-notes" + ".md", "../" + "shared", "shared" + "/docs")
CHECKED_SUFFIXES = {".py", ".md", ".sh", ".toml", ".yaml", ".yml", ".cfg", ".ini"}
CHECKED_NAMES = {"Makefile", "Dockerfile", "run"}

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`[^`]*`")
CODE_CITATION = re.compile(r"\bdocs/([\w.-]+\.md)(?:#([\w-]+))?")
TOP_DIRS = ("crn", "pipeline", "jobs", "bench", "infra", "tests", "docs")
PATH_NAME = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*[\w/])" % "|".join(TOP_DIRS))
DOTTED_NAME = re.compile(r"(?<![\w./-])((?:crn|pipeline|jobs|bench)(?:\.\w+)+)")


def markdown_lines(path: Path) -> list[tuple[int, str, bool]]:
    """(line number, text, inside a fenced code block) of every line but the fences themselves."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        lines.append((number, line, fenced))
    return lines


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    return [(number, line) for number, line, fenced in markdown_lines(path) if not fenced]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text lowercased, every character that is not
    a letter, digit, underscore, hyphen or space dropped, each space turned into a dash."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, duplicates numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[tuple[int, str]]:
    links = []
    for number, line in prose_lines(path):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, mailto:, ...
                continue
            links.append((number, target))
    return links


def repository_files() -> list[Path]:
    """Tracked files, and new ones git does not ignore (what a commit of this tree would hold)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                             cwd=ROOT, capture_output=True, check=True).stdout.decode()
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file but the usual noise
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not {".git", ".venv", "work", "__pycache__"} & set(p.relative_to(ROOT).parts)]
    return [ROOT / n for n in names if (ROOT / n).is_file()]


def checked_text_files() -> list[Path]:
    return [p for p in repository_files() if p.suffix in CHECKED_SUFFIXES or p.name in CHECKED_NAMES]


def test_slug_follows_githubs_rule():
    assert slug("The authors' checkpoints") == "the-authors-checkpoints"
    assert slug("Head with K outputs") == "head-with-k-outputs"
    assert slug("`import_weights`") == "import_weights"
    assert slug("GPU check (make bench-gpu)") == "gpu-check-make-bench-gpu"
    assert slug("Ray: logical CPUs") == "ray-logical-cpus"


def test_there_are_docs_to_check():
    names = {p.name for p in DOCS}
    assert {"README.md", "model.md", "recipe.md", "design.md", "jobs.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path):
    problems = []
    for number, target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        where = f"{doc.relative_to(ROOT)}:{number}: {target}"
        path = (doc.parent / file_part).resolve() if file_part else doc
        if ROOT not in path.parents and path != ROOT:
            problems.append(f"{where}: points outside the repository")
            continue
        if not path.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"{where}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not problems, "broken links:\n" + "\n".join(problems)


def text_lines() -> list[tuple[Path, int, str]]:
    """(file, line number, text) of every line of the repository's checked text files."""
    lines = []
    for path in checked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        lines += [(path, number, line) for number, line in enumerate(text.splitlines(), start=1)]
    return lines


def test_nothing_cites_material_outside_the_repository():
    problems = []
    for path, number, line in text_lines():
        for needle in FORBIDDEN:
            if needle in line:
                problems.append(f"{path.relative_to(ROOT)}:{number}: cites {needle}: {line.strip()[:100]}")
    assert not problems, "cite docs/ instead:\n" + "\n".join(problems)


def test_every_docs_citation_in_the_code_exists():
    docs_dir = ROOT / "docs"
    problems = []
    for path, number, line in text_lines():
        for match in CODE_CITATION.finditer(line):
            name, anchor = match.groups()
            target = docs_dir / name
            where = f"{path.relative_to(ROOT)}:{number}: {match.group(0)}"
            if not target.exists():
                problems.append(f"{where}: no such file")
            elif anchor and anchor not in anchors(target):
                problems.append(f"{where}: no heading #{anchor} in docs/{name}")
    assert not problems, "stale citations of docs/:\n" + "\n".join(problems)


def code_spans(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every `inline code` span and fenced code line of a markdown file."""
    spans = []
    for number, line, fenced in markdown_lines(path):
        if fenced:
            spans.append((number, line))
        else:
            spans.extend((number, m.group(0)[1:-1]) for m in INLINE_CODE.finditer(line))
    return spans


def dotted_name_problem(name: str) -> str | None:
    """None if `name` is a module of the repository, or a module followed by names its source mentions."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if source.is_file():
            rest = parts[cut:]
            if cut == 1:  # a top package and names: an MLflow tag like crn.eval.<metric>, not code
                return None
            text = source.read_text(encoding="utf-8")
            missing = [r for r in rest if not re.search(rf"\b{re.escape(r)}\b", text)]
            return f"{'.'.join(parts[:cut])} does not mention {', '.join(missing)}" if missing else None
    return "no such module"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_names_in_the_docs_exist(doc: Path):
    problems = []
    for number, span in code_spans(doc):
        for match in PATH_NAME.finditer(span):
            if span[match.end():match.end() + 1] in ("<", "*", "{"):  # a pattern: bench/bench_<topic>.py
                continue
            name = match.group(1).rstrip("/.")
            if not (ROOT / name).exists():
                problems.append(f"{doc.relative_to(ROOT)}:{number}: {name}: no such file or folder")
        for match in DOTTED_NAME.finditer(span):
            problem = dotted_name_problem(match.group(1))
            if problem:
                problems.append(f"{doc.relative_to(ROOT)}:{number}: {match.group(1)}: {problem}")
    assert not problems, "the docs name things that are not there:\n" + "\n".join(problems)


JOB_COMMAND = re.compile(r"\bjobs[/.](\w+)(?:\.py)?\b(.*)")


def job_commands(path: Path) -> list[tuple[int, str, set[str]]]:
    """(line number, job name, flags) of every job command in code blocks and code spans,
    backslash-continued lines joined; only the flags after the job's name count."""
    commands, pending, start = [], "", 0
    for number, span in code_spans(path):
        if not pending:
            start = number
        text = pending + span
        if text.rstrip().endswith("\\"):
            pending = text.rstrip()[:-1] + " "
            continue
        pending = ""
        for match in JOB_COMMAND.finditer(text):
            tail = re.split(r"[|;&#]|\bjobs[/.]\w+", match.group(2))[0]
            commands.append((start, match.group(1), set(re.findall(r"(?<![\w-])--[a-z][\w-]*", tail))))
    return commands


def job_flags(name: str) -> set[str]:
    """The flags of jobs/<name>.py, from the parser its --help prints."""
    captured = {}

    def capture(parser, args=None, namespace=None):
        captured["parser"] = parser
        raise SystemExit(0)

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        try:
            importlib.import_module(f"jobs.{name}").main(["--help"])
        except SystemExit:
            pass
    return {flag for action in captured["parser"]._actions for flag in action.option_strings}


def test_job_commands_use_the_jobs_flags():
    commands = [(doc, *command) for doc in DOCS for command in job_commands(doc)]
    assert any(name == "train" for _, _, name, _ in commands), "no job commands found: is the parser broken?"
    known: dict[str, set[str]] = {}
    problems = []
    for doc, number, name, flags in commands:
        if not (ROOT / "jobs" / f"{name}.py").is_file():
            problems.append(f"{doc.relative_to(ROOT)}:{number}: jobs/{name}.py: no such job")
            continue
        if name not in known:
            known[name] = job_flags(name)
        for flag in sorted(flags - known[name]):
            problems.append(f"{doc.relative_to(ROOT)}:{number}: jobs/{name}.py has no flag {flag}")
    assert not problems, "commands in the docs that would not run:\n" + "\n".join(problems)


def test_jobs_reference_lists_every_flag_of_every_job():
    sections: dict[str, set[str]] = {}
    current = None
    for _, line in prose_lines(ROOT / "docs" / "jobs.md"):
        heading = HEADING.match(line)
        if heading:
            current = heading.group(2).strip() if len(heading.group(1)) == 2 else current
            sections.setdefault(current, set())
        elif current and (row := re.match(r"^\|\s*`(--[\w-]+)`\s*\|", line)):
            sections[current].add(row.group(1))
    jobs = sorted(p.stem for p in (ROOT / "jobs").glob("*.py") if p.stem != "__init__")
    problems = []
    for name in jobs:
        if name not in sections:
            problems.append(f"jobs/{name}.py has no section in docs/jobs.md")
            continue
        flags = job_flags(name) - {"-h", "--help"}
        if sections[name] != flags:
            problems.append(f"jobs/{name}.py: missing from the table {sorted(flags - sections[name])}, "
                            f"not a flag {sorted(sections[name] - flags)}")
    assert not problems, "docs/jobs.md is out of date: run .venv/bin/python docs/update_jobs_md.py\n" + "\n".join(problems)
