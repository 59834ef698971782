"""How to write a `priorclip` command the user can paste and run as it is.

`scripts/setup.sh` installs into `.venv` without putting it on PATH, so a printed bare
`priorclip search ...` fails with "command not found" right after the README's set-up (issue
#16.11). Printed commands therefore name the executable that is running.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def _as_typed(path: str) -> str:
    """`path` relative to the current directory when it is below it (`.venv/bin/priorclip`),
    else absolute; quoted for a POSIX shell."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path)
    return shlex.quote(path if rel.startswith("..") else (rel if os.sep in rel else f".{os.sep}{rel}"))


def priorclip_command() -> str:
    """`priorclip` if that is what PATH runs, else the path of the `priorclip` script that is running
    (or the one beside this Python), else `PYTHON -m priorclip.cli.main`."""
    argv0 = sys.argv[0] if sys.argv else ""
    script = argv0 if Path(argv0).name == "priorclip" and os.path.isfile(argv0) else None
    if script is None:
        beside = Path(sys.executable).parent / "priorclip"
        script = str(beside) if beside.is_file() else None
    on_path = shutil.which("priorclip")
    if script is None:
        return "priorclip" if on_path else f"{_as_typed(sys.executable)} -m priorclip.cli.main"
    if on_path and os.path.samefile(on_path, script):
        return "priorclip"
    return _as_typed(script)
