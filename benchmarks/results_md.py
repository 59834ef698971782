"""One writer for benchmarks/RESULTS.md: each script owns `## ...` sections and replaces only those.

Written atomically (temp file + rename) so a reader never sees half a file.
"""
from __future__ import annotations

import json
from pathlib import Path

HEADER = "# Benchmark results\n\nWritten by the scripts in benchmarks/.\n"


def write_sections(path: str | Path, sections: dict[str, str], writer: str) -> None:
    """Replace (or append) the sections named by their `## heading` lines; keep everything else."""
    path = Path(path)
    text = path.read_text() if path.exists() else HEADER
    for heading, body in sections.items():
        block = f"{heading}\n\n<!-- written by {writer}; edits here are overwritten -->\n\n{body.strip()}\n"
        start = text.find(heading + "\n")
        if start < 0:
            text = text.rstrip("\n") + "\n\n" + block
            continue
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + block + (text[end:] if end >= 0 else "")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: str | Path, obj) -> None:
    """`obj` as indented JSON at `path`, atomically (temp file + rename): a reader (run.py merging a
    child's figures) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def save_results(json_name: str, results: dict, heading: str, body: str, writer: str,
                 markdown: str | Path | None = None) -> None:
    """A script's figures as benchmarks/JSON_NAME (machine-readable) and its section of `markdown`
    (default benchmarks/RESULTS.md; "" writes the JSON only)."""
    here = Path(__file__).resolve().parent
    write_json(here / json_name, results)
    if markdown != "":
        write_sections(here / "RESULTS.md" if markdown is None else markdown, {heading: body}, writer)
