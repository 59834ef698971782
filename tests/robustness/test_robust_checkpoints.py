"""Bad checkpoints: wrong architecture, truncated, pickled, another model kind, incomplete directory."""
from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

import priorclip.models as pm
from robustness_support import assert_one_line_error
from priorclip.errors import CheckpointError
from priorclip.models.checkpoints import load_weights_strict, read_state_dict


@pytest.fixture(scope="module")
def open_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = pm.create_model("priorclip-open-baseline-small")
    return pm.save_checkpoint(model, tmp_path_factory.mktemp("ck") / "open"), model


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_wrong_architecture_lists_differing_keys_and_shapes(open_ckpt, tmp_path):
    src, _ = open_ckpt
    d = _copy(src, tmp_path / "ck")
    meta = json.loads((d / "config.json").read_text())
    meta["config"]["text_cfg"]["width"] = 64  # the config now says another width than the weights have
    meta["config"]["text_cfg"]["layers"] = 3
    meta.pop("save_id")
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as info:
        pm.load_checkpoint(d)
    msg = str(info.value)
    assert str(d / "model.safetensors") in msg and "12 missing: transformer.resblocks.2." in msg
    assert "shape mismatches: " in msg and "checkpoint (128,) vs model (64,)" in msg


def test_open_weights_into_a_closed_model(open_ckpt):
    src, _ = open_ckpt
    closed = pm.create_model("priorclip-closed-baseline-small")
    with pytest.raises(CheckpointError, match=r"does not match priorclip-closed-baseline-small .* missing: .* unexpected: "):
        load_weights_strict(closed, read_state_dict(src / "model.safetensors"), source=str(src))
    with pytest.raises(CheckpointError, match="a open-domain checkpoint cannot load into a closed-baseline model"):
        pm.load_official_checkpoint(src / "model.safetensors", "open", model=closed)


def test_truncated_safetensors(open_ckpt, tmp_path):
    src, _ = open_ckpt
    d = _copy(src, tmp_path / "ck")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 3])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file .*truncated"):
        pm.load_checkpoint(d)
    w.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # header length larger than the file
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_state_dict(w)


def test_directory_missing_config_or_with_garbage_config(open_ckpt, tmp_path):
    src, _ = open_ckpt
    d = _copy(src, tmp_path / "ck")
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: missing \['config\.json'\]"):
        pm.load_checkpoint(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is not a PriorCLIP checkpoint config"):
        pm.load_checkpoint(d)
    with pytest.raises(CheckpointError, match="is not a checkpoint directory"):
        pm.load_checkpoint(tmp_path / "nope")


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_refused_and_never_executed(tmp_path, cli):
    marker = tmp_path / "PWNED"
    for name in ("released.pt", "weights.pth", "model.bin", "noext"):
        bad = tmp_path / name
        with open(bad, "wb") as fh:
            pickle.dump({"state_dict": {"w": _Payload(marker)}}, fh, protocol=2)
        with pytest.raises(CheckpointError, match=r"is a pickled checkpoint; .*refused by default.*allow_pickle=True"):
            read_state_dict(bad)
        with pytest.raises(CheckpointError, match="pickled"):
            pm.load_official_checkpoint(bad, "open")
        code, _, err = cli("convert", bad, "--kind", "open", "--config", "priorclip-open-small", "--out", tmp_path / "o")
        assert code == 2 and assert_one_line_error(err, "convert", str(bad), "--allow-pickle")
        # even when allowed, torch's weights-only unpickler refuses the payload instead of running it
        with pytest.raises(CheckpointError, match="weights-only pickle"):
            read_state_dict(bad, allow_pickle=True)
    assert not marker.exists()


def test_cli_convert_of_incomplete_directory_is_one_line(open_ckpt, tmp_path, cli):
    src, _ = open_ckpt
    d = _copy(src, tmp_path / "ck")
    (d / "config.json").unlink()
    code, _, err = cli("convert", d, "--open-clip-state-dict", "--out", tmp_path / "x.safetensors")
    assert code == 2 and assert_one_line_error(err, "convert", str(d), "missing ['config.json']")
    state = {"w": torch.zeros(2)}
    save_file(state, str(tmp_path / "tiny.safetensors"))
    code, _, err = cli("convert", tmp_path / "tiny.safetensors", "--kind", "open", "--config", "priorclip-open-small",
                       "--out", tmp_path / "o2")
    assert code == 2 and assert_one_line_error(err, "convert", "tiny.safetensors", "missing:", "unexpected: w")
