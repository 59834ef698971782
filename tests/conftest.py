"""Shared test fixtures.

Tests that need real data or conformance fixtures find them through environment variables
(`PRIORCLIP_SHARED_DIR`, default `../shared` beside the project root; `PRIORCLIP_CONFORMANCE_DIR`,
default `$PRIORCLIP_SHARED_DIR/conformance`). Without them they skip with the reason; with
`PRIORCLIP_REQUIRE_SHARED=1` (set by `.ci/run`) a missing directory is a failure instead.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from shared_paths import need_path, shared_dir  # noqa: E402


@pytest.fixture(scope="session")
def ucm_dir() -> Path:
    return need_path(shared_dir() / "data" / "ucm-captions", "UCM-captions benchmark")


@pytest.fixture(scope="session")
def annotations_dir() -> Path:
    return need_path(shared_dir() / "data" / "annotations", "benchmark caption files")
