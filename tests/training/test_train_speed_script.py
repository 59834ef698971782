"""benchmarks/train_speed.py's core functions with tiny models: output structure, positive numbers,
and the cache figure's FLOP bookkeeping (the caches remove exactly the text and prior forwards)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training_helpers import TINY_BASELINE, TINY_CLOSED

from scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_speed.py"
TINY_OPEN = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16,
                                             "prior_layers": [1, 1, 1, 1], "prior_width": 16},
             "text_cfg": {"width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def ts():
    return load_script("benchmarks/train_speed.py", "priorclip_train_speed")


@pytest.fixture(scope="module")
def data_dir(ts, tmp_path_factory):
    return ts.make_dataset(tmp_path_factory.mktemp("ts_data"), batch=4, image_size=32)


def test_step_time_memory_and_ddp_rank_single(ts, data_dir, tmp_path):
    base = {"data_dir": str(data_dir), "device": "cpu", "precision": "auto", "steps": 2, "warmup": 1, "threads": 1,
            "batch": 4}
    spec = {**base, "label": "tiny closed", "recipe": "closed.yaml", "model": "priorclip-closed-small",
            "model_overrides": TINY_CLOSED}
    r = ts.measure_steps(spec, tmp_path / "steps")
    assert r["stage"] == "closed" and r["batch"] == 4 and r["precision"] == "fp32"
    assert len(r["step_s_runs"]) == 2 and all(s > 0 for s in r["step_s_runs"])
    assert r["step_s"] > 0 and r["samples_per_s"] == pytest.approx(4 / r["step_s"], rel=0.01)
    # the prior is frozen: fewer trainable than total parameters; AdamW state counted from the trainable ones
    assert 0 < r["trainable_m"] < r["params_m"]
    assert r["state_mb"] == pytest.approx(r["trainable_m"] * 1e6 * 12 / 2**20, rel=0.01)
    assert r["peak_mb"] >= r["base_mb"] > 0 and r["mb_per_sample"] >= 0  # in-process: the allocator may reuse pages

    d = ts.measure_ddp_rank({**base, "recipe": "closed-baseline.yaml", "model": "priorclip-closed-baseline-small",
                             "model_overrides": TINY_BASELINE, "mode": "single"},
                            tmp_path / "ddp")
    assert d["world_size"] == 1 and d["global_batch"] == 4 and d["step_s"] > 0
    assert d["samples_per_s"] == pytest.approx(4 / d["step_s"], rel=0.01)


def test_cache_figure_and_markdown(ts, data_dir, tmp_path):
    spec = {"data_dir": str(data_dir), "device": "cpu", "precision": "fp32", "steps": 1, "warmup": 1, "threads": 1,
            "batch": 4, "model": "priorclip-open-small", "model_overrides": TINY_OPEN}
    c = ts.measure_cache(spec, tmp_path / "cache")
    assert set(c["step_s"]) == {"none", "text", "text+prior"} and all(v > 0 for v in c["step_s"].values())
    assert c["ratio_cached"] == pytest.approx(c["step_s"]["text+prior"] / c["step_s"]["none"], rel=0.05)  # from rounded seconds
    g = c["gflops"]
    assert g["step_none"] > g["step_cached"] > 0 and g["text_forward"] > 0 and g["prior_forward"] > 0
    # the caches skip exactly the frozen towers' forwards: the counted FLOPs must add up
    assert g["step_none"] - g["step_cached"] == pytest.approx(g["text_forward"] + g["prior_forward"], rel=0.02)
    assert c["flop_ratio"] == pytest.approx(g["step_cached"] / g["step_none"], abs=2e-3)

    res = {"machine": "test", "torch": "x", "device": "cpu", "threads": 1, "loadavg_start": [0.0], "loadavg_end": [0.0],
           "date": "today", "mode": "quick", "total_s": 1.0, "note": "n.", "memory_method": "m.",
           "steps": [], "ddp": {"model": "m", "recipe": "closed.yaml", "global_batch": 4, "backend": "gloo",
                                "threads_total": 2, "threads_per_rank": 1, "single_samples_per_s": 2.0,
                                "ddp_samples_per_s": 3.0, "ratio": 1.5, "half_threads_samples_per_s": 1.25,
                                "efficiency": 1.2, "rounds": 1},
           "cache": [c]}
    md = ts.markdown(res)
    assert "ratio **1.50**" in md and "efficiency = DDP / (2 x that) = 1.20" in md and "| priorclip-open-small | 4 |" in md and "FLOP bound" in md
    out = tmp_path / "RESULTS.md"
    out.write_text("# Benchmark results\n\n## Other\n\nkeep me\n")
    sys.path.insert(0, str(SCRIPT.parent))
    from results_md import write_sections

    write_sections(out, {ts.SECTION: md}, "test")
    text = out.read_text()
    assert "keep me" in text and text.count(ts.SECTION) == 1 and "ratio **1.50**" in text


def test_child_results_are_parsed_and_failures_reported(ts):
    ok = subprocess.Popen([sys.executable, "-c", "print('noise'); print('RESULT ' + '{\"a\": 1}')"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert ts._collect([ok], timeout=60) == [{"a": 1}]
    bad = subprocess.Popen([sys.executable, "-c", "raise SystemExit('boom')"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with pytest.raises(RuntimeError, match="boom"):
        ts._collect([bad], timeout=60)
    assert json.loads(json.dumps(ts._child_env(3, {"RANK": "1"})))["OMP_NUM_THREADS"] == "3"


def test_load_note_trusts_current_cpu_use_over_the_lagging_load_average(ts):
    busy = ts.busy_cores(0.2)
    assert busy is None or 0.0 <= busy <= (__import__("os").cpu_count() or 1) + 1e-6
    # a job that just ended still holds the 1-minute load average up: not "other work"
    assert ts._load_note(1.6, 0.1).startswith("The machine was otherwise idle")
    assert ts._load_note(1.6, 1.7).startswith("Other work was running (1.7 cores busy")
    assert ts._load_note(1.6, None).startswith("Other work was running (1-minute load average 1.6")
