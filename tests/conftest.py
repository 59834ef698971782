"""Shared test fixtures.

Tests that need real data or conformance fixtures find them through environment variables
(`PRIORCLIP_SHARED_DIR`, default `../shared` beside the project root; `PRIORCLIP_CONFORMANCE_DIR`,
default `$PRIORCLIP_SHARED_DIR/conformance`). Without them they skip with the reason; with
`PRIORCLIP_REQUIRE_SHARED=1` (set by `.ci/run`) a missing directory is a failure instead.
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


@pytest.fixture(scope="session")
def ucm_dir() -> Path:
    return need_path(shared_dir() / "data" / "ucm-captions", "UCM-captions benchmark")


@pytest.fixture(scope="session")
def annotations_dir() -> Path:
    return need_path(shared_dir() / "data" / "annotations", "benchmark caption files")
