"""Bad model configs and bad command lines: ConfigError naming the key; the CLI prints one line, exit 2."""
from __future__ import annotations

import pytest
from PIL import Image

import priorclip.models as pm
from robustness_support import assert_one_line_error
from priorclip.errors import ConfigError

BAD_OVERRIDES = [
    ("priorclip-open-small", {"text_cfg": {"widht": 64}}, r"unknown model config key 'text_cfg\.widht' \(did you mean 'text_cfg\.width'\?\)"),
    ("priorclip-closed-small", {"pae_cfg": {"filtersize": 4}}, r"did you mean 'pae_cfg\.filter_size'"),
    ("priorclip-open-small", {"embed_dimm": 64}, r"did you mean 'embed_dim'"),
    ("priorclip-open-small", {"embed_dim": "128"}, r"'embed_dim' expects int, got '128'"),
    ("priorclip-open-small", {"embed_dim": True}, r"'embed_dim' must be a positive integer, got True"),
    ("priorclip-open-small", {"embed_dim": -1}, r"'embed_dim' must be a positive integer, got -1"),
    ("priorclip-open-small", {"vision_cfg": {"image_size": 0}}, r"'vision_cfg\.image_size' must be a positive integer"),
    ("priorclip-open-small", {"text_cfg": {"heads": 3}}, r"text_cfg\.heads=3 does not divide text_cfg\.width=128"),
    ("priorclip-closed-small", {"pae_cfg": {"heads": 3}}, r"heads=3 does not divide embed_dim=128"),
    ("priorclip-closed-small", {"pae_cfg": {"heads": 0}}, r"'pae_cfg\.heads' must be a positive integer, got 0"),
    ("priorclip-closed-small", {"text_cfg": {"num_attention_heads": 3}}, r"num_attention_heads=3 does not divide text_cfg\.hidden_size=128"),
    ("priorclip-closed-small", {"pae_cfg": {"filter_size": 99}}, r"filter_size=99 is larger than the 17 visual tokens"),
    ("priorclip-closed-small", {"pae_cfg": {"filter_size": 0}}, r"'pae_cfg\.filter_size' must be a positive integer"),
    ("priorclip-closed-small", {"pae_cfg": {"belief": "medium"}}, r"'pae_cfg\.belief' must be 'hard' or 'soft'"),
    ("priorclip-closed-small", {"pae_cfg": {"dropout": 1.5}}, r"'pae_cfg\.dropout' must be in \[0, 1\)"),
    ("priorclip-closed-small", {"text_cfg": {"context_length": 100}}, r"context_length=100 exceeds text_cfg\.max_position_embeddings=64"),
    ("priorclip-closed-small", {"temperature": 0}, r"'temperature' must be a positive number"),
]


@pytest.mark.parametrize("name,overrides,pattern", BAD_OVERRIDES, ids=[p for _, _, p in BAD_OVERRIDES])
def test_bad_config_values_raise_config_error_naming_the_key(name, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        pm.create_model(name, **overrides)


def test_unknown_model_name_suggests_the_nearest():
    with pytest.raises(ConfigError, match=r"unknown model 'priorclip-closd-small'; did you mean \['priorclip-closed-small'"):
        pm.create_model("priorclip-closd-small")


def test_user_config_file_with_bad_json_or_unknown_architecture(tmp_path, monkeypatch):
    from priorclip.models import factory

    monkeypatch.setattr(factory, "_CONFIG_DIRS", list(factory._CONFIG_DIRS))  # restored after the test
    bad = tmp_path / "mine.json"
    bad.write_text('{"architecture": "open", ')
    with pytest.raises(ConfigError, match=r"mine\.json is not valid JSON"):
        pm.add_model_config(bad)
    bad.write_text('{"architecture": "open"}')
    with pytest.raises(ConfigError, match=r"mine\.json needs 'architecture' and 'embed_dim'"):
        factory._rescan()
    factory._CONFIG_DIRS.remove(bad)
    factory._rescan()
    with pytest.raises(ConfigError, match="unknown architecture 'closd'"):
        pm.build_model({"architecture": "closd", "embed_dim": 8})


@pytest.mark.parametrize("argv,needle", [
    (["models", "--bogus"], "unrecognized arguments: --bogus"),
    (["zeroshot", "--data", "x"], "the following arguments are required: --model"),
    (["data", "check", "jsonl", "x"], "invalid choice: 'jsonl'"),
    (["convert", "x.pt", "--kind", "half-open", "--out", "y"], "invalid choice: 'half-open'"),
    (["no-such-verb"], "invalid choice: 'no-such-verb'"),
])
def test_wrong_arguments_exit_2_with_argparse_usage(cli, argv, needle):
    code, out, err = cli(*argv)
    assert code == 2 and err.startswith("usage: priorclip") and needle in err and "Traceback" not in err


def test_library_errors_through_the_cli_are_one_line(cli, tmp_path):
    code, _, err = cli("models", "--count", "priorclip-closd-small")
    assert code == 2
    assert_one_line_error(err, "models", "unknown model 'priorclip-closd-small'", "did you mean")

    code, _, err = cli("models", "--show", "nope")
    assert code == 2 and assert_one_line_error(err, "models", "unknown model 'nope'")

    (tmp_path / "dataset.json").write_bytes(b'{"images": [')
    code, _, err = cli("data", "check", "karpathy", tmp_path)
    assert code == 2 and assert_one_line_error(err, "data", str(tmp_path / "dataset.json"), "not valid JSON")

    csv = tmp_path / "caps.csv"
    csv.write_bytes(b"filename,title\n1.jpg,caf\xe9\n")
    code, _, err = cli("data", "check", "csv", csv)
    assert code == 2 and assert_one_line_error(err, "data", str(csv), "line 2 is not UTF-8")

    code, _, err = cli("data", "check", "precomp", tmp_path / "nowhere", "--split", "test")
    assert code == 2 and assert_one_line_error(err, "data", "test_caps.txt", "test_filename.txt", "missing")

    (tmp_path / "scenes" / "forest").mkdir(parents=True)
    code, _, err = cli("zeroshot", "--model", "not-a-model", "--data", tmp_path / "scenes")
    assert code == 2 and assert_one_line_error(err, "zeroshot", str(tmp_path / "scenes"), "no image files found")
    for cls in ("forest", "port"):
        (tmp_path / "scenes" / cls).mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "scenes" / cls / "1.png")
    code, _, err = cli("zeroshot", "--model", "not-a-model", "--data", tmp_path / "scenes", "--split", "all")
    assert code == 2 and assert_one_line_error(err, "zeroshot", "--model 'not-a-model'")

    code, _, err = cli("convert", tmp_path / "x.pt", "--out", tmp_path / "o")
    assert code == 2 and assert_one_line_error(err, "convert", "--kind closed|open is required")
