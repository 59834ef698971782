"""End to end with a real priorclip model checkpoint (random weights, small config): the CLI
indexes with a checkpoint directory, index.json records its path and hash, queries reload it,
and a changed checkpoint is refused instead of silently mixing models."""
from __future__ import annotations

import json
import shutil

import pytest

pm = pytest.importorskip("priorclip.models")

from priorclip.cli.main import main  # noqa: E402

pytestmark = pytest.mark.shared


def test_cli_with_checkpoint_directory(tmp_path, ucm_images, capsys):
    ckpt = tmp_path / "ckpt"
    pm.save_checkpoint(pm.create_model("priorclip-closed-small"), ckpt)
    archive = tmp_path / "archive"
    archive.mkdir()
    for f in ucm_images[:6]:
        shutil.copy(f, archive / f.name)
    out = tmp_path / "idx"
    assert main(["index", str(archive), "--model", str(ckpt), "--out", str(out), "--workers", "0",
                 "--no-progress"]) == 0
    info = json.loads((out / "index.json").read_text())
    assert info["model"]["name"] == "priorclip-closed-small"
    assert info["model"]["checkpoint"] == str(ckpt.resolve()) and len(info["model"]["checkpoint_sha256"]) == 64
    assert info["counts"]["items"] == 6
    capsys.readouterr()

    assert main(["search", str(out), "a green field", "-k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["results"]
    assert len(res) == 3 and all(-1.0 <= h["score"] <= 1.0 for h in res)
    q = sorted(archive.iterdir())[1]
    assert main(["search", str(out), "--image", str(q), "-k", "1", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["results"][0]
    assert top["path"] == str(q.resolve()) and top["score"] == pytest.approx(1.0, abs=1e-3)

    # replacing the weights after indexing is caught
    pm.save_checkpoint(pm.create_model("priorclip-closed-small"), ckpt, extra={"note": "retrained"})
    assert main(["search", str(out), "a green field"]) == 2
    assert "changed since the index was built" in capsys.readouterr().err
