import subprocess
import sys

import torch
from safetensors.torch import load_file

from priorclip.cli.main import main
from priorclip.models import create_model, export_open_clip_state_dict, load_checkpoint


def test_models_verb_lists_and_counts(capsys):
    assert main(["models"]) == 0
    assert "priorclip-closed-small" in capsys.readouterr().out
    assert main(["models", "--count", "priorclip-open-small"]) == 0
    assert "8,837,657 parameters" in capsys.readouterr().out


def test_convert_released_open_checkpoint_and_export(tmp_path, capsys):
    src = create_model("priorclip-open-small")
    torch.save({"state_dict": {"module." + k: v for k, v in export_open_clip_state_dict(src).items()}}, tmp_path / "rel.pt")
    # refused without --allow-pickle, with a one-line error and exit code 2
    assert main(["convert", str(tmp_path / "rel.pt"), "--kind", "open", "--config", "priorclip-open-small",
                 "--out", str(tmp_path / "c")]) == 2
    assert "refused by default" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "rel.pt"), "--kind", "open", "--config", "priorclip-open-small",
                 "--allow-pickle", "--out", str(tmp_path / "c")]) == 0
    loaded = load_checkpoint(tmp_path / "c")
    want, got = src.state_dict(), loaded.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert main(["convert", str(tmp_path / "c"), "--open-clip-state-dict", "--out", str(tmp_path / "oc.safetensors")]) == 0
    assert set(load_file(str(tmp_path / "oc.safetensors"))) == set(src.state_dict())


def test_cli_help_lists_verbs():
    out = subprocess.run([sys.executable, "-m", "priorclip.cli.main", "--help"], capture_output=True, text=True, check=True).stdout
    for verb in ("models", "convert", "data"):
        assert verb in out
