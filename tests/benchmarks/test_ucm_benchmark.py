"""benchmarks/ucm_from_scratch/run.py on tiny models and a tiny synthetic dataset: the subjects'
stage chains, equal pairs, the report, resuming, and the README table's guard."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/ucm_from_scratch/run.py", "priorclip_ucm_bench")


@pytest.mark.slow
def test_subject_chains_equal_pairs_report_and_resume(bench, tiny_ucm, tmp_path):
    out, results = tmp_path / "runs", tmp_path / "results.json"
    argv = ["--tiny", "--data", str(tiny_ucm), "--out", str(out), "--seeds", "0", "--epochs", "2", "--stage2-epochs", "1",
            "--prior-epochs", "1", "--batch-size", "8", "--workers", "0", "--subjects", "clip", "priorclip_open",
            "--results-md", str(tmp_path / "RESULTS.md"), "--json", str(results)]
    bench.main(argv)
    figures = json.loads(results.read_text())
    clip, prior = figures["results"]["clip"]["0"], figures["results"]["priorclip_open"]["0"]
    # 3 classes x 4 train images x 5 captions = 60 pairs, 7 batches of 8 per pass, 2 passes
    assert clip["pairs_seen"] == prior["pairs_seen"] == 2 * 7 * 8
    assert [s["stage"] for s in prior["stages"]] == ["pretrain", "finetune"] and len(clip["stages"]) == 1
    assert prior["stages"][1]["params_trainable"] < prior["stages"][0]["params_trainable"]  # text + prior frozen
    assert prior["prior"]["images_seen"] == 8 and 0 <= prior["prior"]["test_accuracy"] <= 100
    stage1 = yaml.safe_load((out / "0" / "priorclip_open" / "stage1" / "config.yaml").read_text())
    stage2 = yaml.safe_load((out / "0" / "priorclip_open" / "stage2" / "config.yaml").read_text())
    assert stage1["prior_checkpoint"] == str(out / "0" / "prior-open") and stage1["affiliation_weight"] == 1.0
    assert stage2["init_checkpoint"] == str(out / "0" / "priorclip_open" / "stage1" / "checkpoints" / "best")
    for res in (clip, prior):
        assert res["test"]["expected"]["mr"] == pytest.approx(
            json.loads(Path(res["stages"][-1]["run"], "test_best.json").read_text())["expected"]["mr"])
    md = (tmp_path / "RESULTS.md").read_text()
    assert "## UCM-captions from scratch" in md and "PriorCLIP open" in md and "112 pairs" in md

    # finished runs are read back, not trained again
    logs = sorted(out.rglob("log.jsonl"))
    mtimes = [p.stat().st_mtime_ns for p in logs]
    bench.main(argv)
    assert [p.stat().st_mtime_ns for p in logs] == mtimes
    # a report without every subject says which runs it lacks, first
    assert md.split("<!-- written by")[1].split("\n")[2].startswith("**Partial run**")
    assert "open_clip_train seed 0" in md and "closed_soft seed 0" in md and "clip seed 0," not in md
    # --report-only trains nothing: a subject not in --out is left out (and named as missing)
    bench.main(argv[:-6] + ["clip_attribution", "priorclip_open", "--results-md", str(tmp_path / "RESULTS.md"),
                            "--json", str(results), "--report-only", "--note", "Timed on a loaded machine."])
    assert set(json.loads(results.read_text())["results"]) == {"priorclip_open"}
    assert not (out / "0" / "clip_attribution").exists()
    md = (tmp_path / "RESULTS.md").read_text()
    assert "clip_attribution seed 0" in md and "\nTimed on a loaded machine.\n" in md

    # a saved report stands in for a lost --out (same settings only), and its figures come back unchanged
    saved = json.loads(results.read_text())
    elsewhere = argv[:4] + [str(tmp_path / "gone")] + argv[5:-2] + ["--json", str(tmp_path / "again.json"),
                                                                      "--reuse", str(results)]
    bench.main(elsewhere + ["--report-only"])
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["results"]["priorclip_open"] == saved["results"]["priorclip_open"]
    assert not (tmp_path / "gone").exists()
    with pytest.raises(SystemExit, match="epochs 2 .here 3."):
        bench.main(elsewhere[:8] + ["3"] + elsewhere[9:])


def test_readme_block_is_replaced_between_markers(bench, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench.README_START}\nold table\n{bench.README_END}\nafter\n")
    bench.write_readme("| new | table |", readme)
    assert readme.read_text() == f"intro\n{bench.README_START}\n| new | table |\n{bench.README_END}\nafter\n"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="ucm-table"):
        bench.write_readme("x", readme)


def test_stage_budget_arguments_are_checked(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--epochs", "2", "--stage2-epochs", "2"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--speed", "--speed-images", "0"])


@pytest.mark.slow
def test_an_interrupted_run_continues_from_its_last_checkpoint(bench, tiny_ucm, tmp_path, monkeypatch):
    from priorclip.training.loop import Trainer

    def argv(out):
        return ["--tiny", "--data", str(tiny_ucm), "--out", str(out), "--seeds", "0", "--epochs", "2", "--stage2-epochs", "1",
                "--batch-size", "8", "--workers", "0", "--subjects", "clip", "--results-md", "",
                "--json", str(tmp_path / f"{out.name}.json")]

    bench.main(argv(tmp_path / "whole"))
    whole = json.loads((tmp_path / "whole.json").read_text())["results"]["clip"]["0"]

    monkeypatch.setattr(bench, "SAVE_EVERY", 3)
    save = Trainer.save

    def killed_after_a_mid_epoch_save(self, name, position, with_state=True):
        save(self, name, position, with_state)
        if position["micro"]:
            raise KeyboardInterrupt  # the process dies right after its checkpoint of step 3
    monkeypatch.setattr(Trainer, "save", killed_after_a_mid_epoch_save)
    with pytest.raises(KeyboardInterrupt):
        bench.main(argv(tmp_path / "cut"))
    monkeypatch.setattr(Trainer, "save", save)
    bench.main(argv(tmp_path / "cut"))

    cut = json.loads((tmp_path / "cut.json").read_text())["results"]["clip"]["0"]
    events = [json.loads(line)["event"] for line in (tmp_path / "cut" / "0" / "clip" / "log.jsonl").open()]
    assert events.count("start") == 1 and events.count("resume") == 1
    assert cut["pairs_seen"] == whole["pairs_seen"] == 2 * 7 * 8
    assert cut["stages"][0]["pairs_timed"] == 2 * 7 * 8 - 3 * 8  # the killed process's 3 steps are not timed
    # the trainer's resume is exact: the same weights, so the same test figures
    assert cut["test"]["expected"] == whole["test"]["expected"]


@pytest.mark.slow
def test_speed_times_every_subject_on_one_subset(bench, tiny_ucm, tmp_path):
    """--speed: each subject trains from scratch on the same subset in one call (open_clip_train
    too, timed from its own log), and the cost table compares them; nothing is read back."""
    md, out = tmp_path / "RESULTS.md", tmp_path / "runs"
    argv = ["--tiny", "--data", str(tiny_ucm), "--out", str(out), "--seeds", "0", "--batch-size", "8", "--workers", "0",
            "--subjects", "open_clip_train", "clip", "priorclip_open", "--speed", "--speed-images", "8",
            "--results-md", str(md), "--speed-json", str(tmp_path / "speed.json")]
    bench.main(argv)
    figures = json.loads((tmp_path / "speed.json").read_text())
    subset = json.loads((out / "speed" / "data" / "dataset.json").read_text())["images"]
    assert [sum(im["split"] == s for im in subset) for s in ("train", "val", "test")] == [8, 3, 3]
    assert {im["filename"][:4] for im in subset if im["split"] == "train"} >= {"airp", "farm", "beac"}
    summary = figures["summary"]
    assert list(summary) == ["open_clip_train", "clip", "priorclip_open"]
    assert {s["pairs_seen"] for s in summary.values()} == {3 * 40}  # 8 images x 5 captions, batch 8, 3 passes
    assert all(s["pairs_per_s"] > 0 and s["gflop_per_pair"] > 0 for s in summary.values())
    text = md.read_text()
    assert "## UCM training speed" in text and "| open_clip_train (plain CLIP, its own trainer) | " in text
    assert not (out / "0").exists()  # the report's runs are untouched
    log = out / "speed" / "runs" / "0" / "clip" / "log.jsonl"
    before = log.stat().st_mtime_ns
    bench.main(argv[:-10] + ["clip", "--speed", "--speed-images", "8", "--results-md", str(md),
                            "--speed-json", str(tmp_path / "speed.json")])
    assert log.stat().st_mtime_ns != before  # timed again, not read back
    assert "open_clip_train" not in json.loads((tmp_path / "speed.json").read_text())["summary"]
