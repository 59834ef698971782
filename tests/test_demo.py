"""`priorclip demo` at a reduced size: every stage leaves its output, metrics beat chance, the
index answers queries."""
import json

import pytest

from priorclip.demo import DemoSettings, chance_levels, run_demo


def test_chance_levels_match_a_random_ranking():
    c = chance_levels(20, 5)
    assert c["t2i_r1"] == pytest.approx(5.0) and c["t2i_r10"] == pytest.approx(50.0)
    # i2t R@1 at chance: 5 of the 100 captions are correct
    assert c["i2t_r1"] == pytest.approx(5.0)


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path, capsys):
    settings = DemoSettings(out=tmp_path / "demo", n_per_class=10, image_size=64, filter_size=4, prior_epochs=3,
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
