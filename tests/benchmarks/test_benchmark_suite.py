"""benchmarks/run.py as the one entry point of the suite: the evaluation part (RSICD-sized, from
cached embeddings) and the child scripts' figures merged into results.json. No timing is asserted."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from scripts import load_script

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def suite():
    return load_script("benchmarks/run.py", "priorclip_bench_run")


@pytest.fixture
def fast_clip_benchmark(suite, monkeypatch):
    """clip_benchmark's recall costs ~10 s at RSICD size; its figure's plumbing is what is tested."""
    sys.path.insert(0, str(BENCH))
    import metrics_speed

    monkeypatch.setattr(metrics_speed, "clip_benchmark_recall", lambda scores, t2i: {"t2i_r1": 0.0})


def test_rsicd_sized_embeddings_have_bit_identical_shared_captions():
    sys.path.insert(0, str(BENCH))
    from metrics_speed import make_embeddings, make_scores

    img, txt, t2i = make_embeddings(dim=512)
    assert img.shape == (1093, 512) and txt.shape == (5465, 512) and len(t2i) == 5465
    assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    distinct = len(np.unique(txt, axis=0))
    assert 5465 - distinct >= 0.10 * 5465  # ~12 % of the captions copy another one
    scores, _ = make_scores()
    _, first = np.unique(scores.T, axis=0, return_index=True)
    assert len(first) < 0.9 * 5465  # copied captions give identical score columns (exact ties)


def test_evaluation_part_and_its_section(suite, fast_clip_benchmark, tmp_path):
    results = {"machine": {"cpu": "x", "usable_cores": 2, "torch_threads": 2, "torch": "t", "open_clip": "o",
                           "load_average_start": [0.0], "load_average_end": [0.0]},
               "settings": {"device": "cpu", "mode": "quick", "runs": 1, "batch": 8}, "date": "d"}
    args = type("Args", (), {"runs": 1})()
    suite.evaluation_section(args, results)
    ev = results["evaluation"]
    assert (ev["n_images"], ev["n_texts"]) == (1093, 5465)
    assert len(ev["seconds"]) == 4 and all(s > 0 for s in ev["seconds"].values())
    metric_s = ev["seconds"]["metrics alone, every tie rule + tie statistics (recall_report)"]
    assert ev["target"] == {"metric_s": metric_s, "limit_s": 0.5, "met": metric_s < 0.5}
    section = suite.markdown_sections(results)["## Evaluation from cached embeddings"]
    assert "1,093 images x 5,465 captions" in section and "clip_benchmark" in section


def _fake_child(directory: Path, name: str, json_name: str, code: str) -> None:
    (directory / name).write_text(
        "import json, sys, pathlib\n"
        f"assert sys.argv[1:4] == ['--markdown', '--results', 'R.md'], sys.argv\n{code}\n"
        f"pathlib.Path(__file__).with_name({json_name!r}).write_text(json.dumps({{'date': 'now', 'rows': [1, 2]}}))\n")


def test_child_scripts_figures_are_merged(suite, fast_clip_benchmark, tmp_path, monkeypatch):
    _fake_child(tmp_path, "good.py", "good.json", "")
    _fake_child(tmp_path, "bad.py", "bad.json", "raise SystemExit(3)")
    (tmp_path / "old.json").write_text(json.dumps({"date": "yesterday", "p50_ms": 7.0}))
    monkeypatch.setattr(suite, "BENCH_DIR", tmp_path)
    monkeypatch.setattr(suite, "CHILD_SCRIPTS", {"good": ("good.py", "good.json", []), "bad": ("bad.py", "bad.json", []),
                                                 "old": ("old.py", "old.json", [])})
    out = tmp_path / "results.json"
    argv = ["--only", "evaluation", "--runs", "1", "--out", str(out), "--markdown", str(tmp_path / "R.md")]
    assert suite.main(argv) == 0
    merged = json.loads(out.read_text())
    assert merged["old"] == {"status": "from an earlier run", "script": "old.py", "date": "yesterday", "p50_ms": 7.0}
    assert "good" not in merged and "evaluation" in merged  # no JSON yet, not run: nothing to copy
    results = {}
    child_args = type("Args", (), {"quick": False, "device": "cpu", "markdown": "R.md"})()
    suite.child_section("good", child_args, results)
    assert results["good"] == {"status": "ok", "script": "good.py", "date": "now", "rows": [1, 2]}
    suite.child_section("bad", child_args, results)
    assert results["bad"] == {"status": "failed", "returncode": 3, "script": "bad.py"}
    assert "## Evaluation from cached embeddings" in (tmp_path / "R.md").read_text()
