"""Where tests find ../shared (real data, conformance fixtures), and the skip-or-fail rule.

A plain module (not conftest) so test files can import it by a name no other folder uses.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("PRIORCLIP_SHARED_DIR", PROJECT_ROOT.parent / "shared"))


def conformance_dir() -> Path:
    return Path(os.environ.get("PRIORCLIP_CONFORMANCE_DIR", shared_dir() / "conformance"))


def require_shared() -> bool:
    return os.environ.get("PRIORCLIP_REQUIRE_SHARED", "") not in ("", "0", "false")


def need_path(path: Path, what: str) -> Path:
    """Return `path` if it exists; otherwise skip (or fail under PRIORCLIP_REQUIRE_SHARED=1)."""
    if path.exists():
        return path
    msg = f"{what} not found at {path} (set PRIORCLIP_SHARED_DIR to the folder holding data/ and conformance/)"
    if require_shared():
        pytest.fail(msg + "; PRIORCLIP_REQUIRE_SHARED=1 turns this skip into a failure")
    pytest.skip(msg)
