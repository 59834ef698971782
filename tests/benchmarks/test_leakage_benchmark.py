"""benchmarks/leakage.py on a tiny synthetic dataset: the altered copies are made, matched to their
sources (and only to them), and the report is written."""
from __future__ import annotations

import json

from scripts import load_script


def test_copies_are_found_and_reported(tiny_ucm, tmp_path):
    bench = load_script("benchmarks/leakage.py", "priorclip_leakage_bench")
    fig = bench.measure(tiny_ucm, [6], limit=2)
    assert fig["test_images"] == 2 and fig["copies"] == 2 * len(bench.TRANSFORMS)
    plain, aligned = fig["rows"]
    assert not plain["geometric"] and aligned["geometric"]
    # synthetic scenes are smooth, so even whole-image hashes find some copies; alignment finds more,
    # and every rotation (which whole-image hashes never find)
    assert aligned["recall"] > plain["recall"] and aligned["recall"] >= 0.8
    assert all(aligned["recall_by_transform"][f"rotate {a}"] == 1.0 for a in (90, 180, 270))
    assert plain["recall_by_transform"]["rotate 90"] == 0.0
    text = bench.markdown(fig)
    assert "| crops + rotations (default) | 6 |" in text
    bench.main(["--data", str(tiny_ucm), "--thresholds", "6", "--limit", "1", "--json", str(tmp_path / "leak.json"),
                "--results-md", str(tmp_path / "RESULTS.md")])
    assert json.loads((tmp_path / "leak.json").read_text())["copies"] == len(bench.TRANSFORMS)
    assert "## Leakage check (UCM-captions)" in (tmp_path / "RESULTS.md").read_text()
