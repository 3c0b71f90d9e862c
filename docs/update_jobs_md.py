"""Rewrite the flag tables of docs/jobs.md from each job's --help; the prose around them stays.

    .venv/bin/python docs/update_jobs_md.py

Each table sits between `<!-- flags of jobs/<name>.py: ... -->` and `<!-- end of flags -->`.
The rows come from the parser that `python jobs/<name>.py --help` prints: flag, default
(`required` or `off` for a switch) and help text, with the choices of a flag that has them.
tests/test_docs.py fails when a job's flags and its table differ.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOBS_MD = ROOT / "docs" / "jobs.md"
TABLE = re.compile(r"(<!-- flags of jobs/(\w+)\.py:[^>]*-->\n)(.*?)(<!-- end of flags -->)", re.DOTALL)


def job_parser(name: str) -> argparse.ArgumentParser:
    """The parser jobs/<name>.py builds, caught where it would parse `--help`."""
    captured = {}

    def capture(parser, args=None, namespace=None):
        captured["parser"] = parser
        raise SystemExit(0)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        importlib.import_module(f"jobs.{name}").main(["--help"])
    except SystemExit:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original
    return captured["parser"]


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def flag_table(name: str) -> str:
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for action in job_parser(name)._actions:
        if not action.option_strings or action.dest == "help":
            continue
        help_text = action.help or ""
        shown = re.search(r" \(default: (.*)\)$", help_text)
        default = f"`{shown.group(1)}`" if shown and shown.group(1) else "-"
        if shown:
            help_text = help_text[: shown.start()]
        if action.required:
            default = "required"
        elif isinstance(action, argparse._StoreTrueAction):
            default = "off"
        if action.choices:
            help_text = help_text.rstrip().rstrip(".") + "; one of " + ", ".join(f"`{c}`" for c in action.choices if c)
        rows.append(f"| `{action.option_strings[0]}` | {cell(default)} | {cell(help_text)} |")
    return "\n".join(rows) + "\n"


def main() -> int:
    sys.path.insert(0, str(ROOT))
    text = JOBS_MD.read_text(encoding="utf-8")
    updated = TABLE.sub(lambda m: m.group(1) + flag_table(m.group(2)) + m.group(4), text)
    missing = sorted({p.stem for p in (ROOT / "jobs").glob("*.py") if p.stem != "__init__"}
                     - {m.group(2) for m in TABLE.finditer(text)})
    JOBS_MD.write_text(updated, encoding="utf-8")
    print(f"{JOBS_MD.relative_to(ROOT)}: {len(TABLE.findall(text))} tables"
          + (" unchanged" if updated == text else " updated"))
    if missing:
        print(f"no section yet for: {', '.join('jobs/' + m + '.py' for m in missing)} (write one by hand)")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
