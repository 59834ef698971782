"""A model name is random weights: refused without --random-weights, seeded with it (issue #16.7),
for every verb that takes --model and for search/serve reloading an index's model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import priorclip.models as pm
from priorclip.cli.main import main
from priorclip.errors import ConfigError
from priorclip.model_spec import load_model_spec
from priorclip.search.encoders import encoder_for_index

NAME = "priorclip-closed-small"


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_model_name_is_seeded_and_refused_when_the_caller_says_so(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"model name, not a checkpoint directory.*--random-weights"):
        load_model_spec(NAME, random_weights=False)  # what the CLI passes without --random-weights
    rng = torch.get_rng_state()
    a = load_model_spec(NAME, random_weights=True)
    b = load_model_spec(NAME)  # library callers that do not say get the same weights, with a warning
    assert _same_weights(a, b)  # the same weights at every call
    assert torch.equal(rng, torch.get_rng_state())  # without moving the caller's RNG
    assert capsys.readouterr().err.count("seeded RANDOM weights") == 2
    ckpt = tmp_path / "ckpt"
    pm.save_checkpoint(a, ckpt)
    assert _same_weights(load_model_spec(ckpt), a)
    with pytest.raises(ConfigError, match="is a checkpoint directory; drop --random-weights"):
        load_model_spec(ckpt, random_weights=True)
    with pytest.raises(ConfigError, match="neither a checkpoint directory nor a registered model name"):
        load_model_spec(tmp_path / "nope", random_weights=True)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    rng = np.random.default_rng(0)
    for i, scene in enumerate(["field", "river", "field", "river"]):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / f"{scene}_{i}.png")
    return root


def test_index_and_search_with_random_weights(archive, tmp_path, capsys):
    out = tmp_path / "idx"
    argv = ["index", str(archive), "--model", NAME, "--out", str(out), "--workers", "0", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "priorclip index: error: --model 'priorclip-closed-small' is a model name" in err
    assert "--random-weights" in err
    assert not out.exists()

    assert main(argv + ["--random-weights"]) == 0
    model = json.loads((out / "index.json").read_text())["model"]
    assert model["random_weights"] is True and model["name"] == NAME and model["checkpoint"] is None
    capsys.readouterr()

    runs = []
    for _ in range(2):  # each call loads the model afresh: the same weights, so the same ranking
        assert main(["search", str(out), "a green field", "-k", "4", "--json"]) == 0
        captured = capsys.readouterr()
        assert "was built with --random-weights" in captured.err and "chance-level" in captured.err
        runs.append([(h["path"], round(h["score"], 5)) for h in json.loads(captured.out)["results"]])
    assert runs[0] == runs[1]
    q = archive / "field_2.png"  # query-time weights are the index-time weights: an image finds itself
    assert main(["search", str(out), "--image", str(q), "-k", "1", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["results"][0]
    assert top["path"] == str(q.resolve()) and top["score"] == pytest.approx(1.0, abs=1e-4)


def test_an_index_of_unseeded_random_weights_is_refused():
    """Indexes built from a bare name before --random-weights existed cannot be reproduced."""
    info = {"name": NAME, "spec": NAME, "checkpoint": None, "embed_dim": 128}
    with pytest.raises(ConfigError, match="unseeded random weights.*rebuild it"):
        encoder_for_index(info)


def test_evaluate_and_zeroshot_refuse_a_bare_model_name(archive, tmp_path, capsys):
    caps = tmp_path / "dataset.json"
    caps.write_text(json.dumps({"images": [{"filename": p.name, "split": "test", "sentences": [{"raw": p.stem}]}
                                           for p in sorted(archive.glob("*.png"))]}))
    evaluate = ["evaluate", "--model", NAME, "--data", str(caps), "--images-root", str(archive), "--workers", "0"]
    zeroshot = ["zeroshot", "--model", NAME, "--data", str(archive), "--split", "all", "--labels", "prefix",
                "--workers", "0"]
    for argv in (evaluate, zeroshot):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"priorclip {argv[0]}: error: --model 'priorclip-closed-small' is a model name" in err
    assert main(evaluate + ["--out", str(tmp_path / "r.json"), "--random-weights"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["random_weights"] is True
    assert main(zeroshot + ["--out", str(tmp_path / "z.json"), "--random-weights"]) == 0
    assert json.loads((tmp_path / "z.json").read_text())["random_weights"] is True
