"""`priorclip demo` at a reduced size: every stage leaves its output, metrics beat chance, the
index answers queries."""
import json
from pathlib import Path

import pytest

from priorclip.demo import DemoSettings, chance_levels, previous_run, run_demo


def test_chance_levels_match_a_random_ranking():
    c = chance_levels(20, 5)
    assert c["t2i_r1"] == pytest.approx(5.0) and c["t2i_r10"] == pytest.approx(50.0)
    # i2t R@1 at chance: 5 of the 100 captions are correct
    assert c["i2t_r1"] == pytest.approx(5.0)


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path, capsys):
    settings = DemoSettings(out=tmp_path / "demo", n_per_class=10, image_size=64, prior_epochs=3,
                            epochs=5, batch_size=16, workers=0)
    summary = run_demo(settings)
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "chance level" in out
    assert f"{summary['splits']['test']} test images only" in out  # the comparison is called noise
    demo = tmp_path / "demo"
    assert json.loads((demo / "demo_summary.json").read_text())["synthetic"] is True
    for run in ("prior", "priorclip", "baseline"):
        assert (demo / "runs" / run / "test_best.json").is_file(), run
    assert (demo / "runs" / "priorclip" / "checkpoints" / "best" / "model.safetensors").is_file()
    chance = summary["chance"]["mr"]
    for name in ("priorclip", "baseline"):
        assert summary["results"][name]["mr"] > chance + 10, (name, summary["results"][name], chance)
    assert [s["step"][:3] for s in summary["steps"]] == ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6"]
    from priorclip.search.query import SearchIndex

    index = SearchIndex(demo / "index")
    assert len(index) == 100
    hits = index.search_text("three planes parked beside a grey runway", k=5)
    assert len(hits) == 5 and hits[0]["score"] >= hits[-1]["score"]
    assert all(len(v) == 3 for v in summary["queries"].values())
    assert previous_run(settings)[0] == summary  # what `demo --serve` finds and serves without a rerun
    assert "Search it yourself:  " in out and f"search {demo / 'index'} " in out


def _finished_demo(out, settings):
    """The files a finished demo leaves (their content does not matter to --serve)."""
    from priorclip.demo import _output_settings

    for run in ("prior", "priorclip", "baseline"):
        (out / "runs" / run).mkdir(parents=True)
        (out / "runs" / run / "test_best.json").write_text("{}")
    (out / "index").mkdir()
    (out / "index" / "index.json").write_text("{}")
    (out / "demo_summary.json").write_text(json.dumps({"settings": _output_settings(settings)}))


def test_serve_shows_a_finished_demo_without_running_it_again(tmp_path, monkeypatch, capsys):
    """Issue #16.11: `demo --serve` serves the outputs it finds; --rerun, other settings or a missing
    file run the pipeline (replacing the outputs) first."""
    import priorclip.demo as demo
    from priorclip.cli.main import main

    out = tmp_path / "demo"
    _finished_demo(out, DemoSettings(out=out))
    calls = []
    monkeypatch.setattr(demo, "serve_index", lambda index_dir, port, device: calls.append(("serve", index_dir, port)))
    monkeypatch.setattr(demo, "run_demo", lambda settings, serve, port: calls.append(("run", settings.seed, serve)))

    assert main(["demo", "--serve", "--out", str(out), "--port", "8123"]) == 0
    assert calls == [("serve", out / "index", 8123)]
    printed = capsys.readouterr().out
    assert "serving the finished demo" in printed and "--rerun" in printed and f"serve {out / 'index'}" in printed
    assert (out / "runs").is_dir()  # nothing deleted

    calls.clear()
    assert main(["demo", "--serve", "--out", str(out), "--seed", "1"]) == 0
    assert calls == [("run", 1, True)] and "was made with other settings" in capsys.readouterr().out
    assert not out.exists()  # the old outputs were replaced

    for argv, why in ((["--rerun"], "replacing the previous demo outputs"), ([], "incomplete")):
        _finished_demo(out, DemoSettings(out=out))
        if not argv:
            (out / "index" / "index.json").unlink()
        calls.clear()
        assert main(["demo", "--serve", "--out", str(out), *argv]) == 0
        assert calls == [("run", 0, True)] and why in capsys.readouterr().out


def test_printed_commands_run_as_written(tmp_path, monkeypatch, capsys):
    """After scripts/setup.sh `priorclip` is .venv/bin/priorclip, not on PATH: say that path."""
    import shutil

    from priorclip.cli.invocation import priorclip_command
    from priorclip.demo import print_next_steps

    script = tmp_path / ".venv" / "bin" / "priorclip"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", [str(script), "demo"])  # what the kernel hands a script run by path
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert priorclip_command() == ".venv/bin/priorclip"
    print_next_steps(Path("my demo") / "index")
    assert capsys.readouterr().out.strip() == (
        "Search it yourself:  .venv/bin/priorclip search 'my demo/index' \"planes near a runway\"   "
        "or   .venv/bin/priorclip serve 'my demo/index'")
    monkeypatch.setattr(shutil, "which", lambda name: str(script))  # on PATH (venv activated)
    assert priorclip_command() == "priorclip"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # not below the current folder: the absolute path
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert priorclip_command() == str(script)
