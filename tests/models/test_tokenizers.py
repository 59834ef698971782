import pytest
import torch

from priorclip.errors import ConfigError
from priorclip.models import ClipTokenizer, WordPieceTokenizer, train_wordpiece


def test_builtin_vocabulary_tokenizes_any_english_text():
    tok = WordPieceTokenizer(context_length=16)
    ids = tok(["Planes, 3 of them!", "x"])
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    assert ids[0, 0] == tok.vocab.index("[CLS]")
    assert (ids[0] == tok.vocab.index("[UNK]")).sum() == 0
    assert ids[1, 3:].eq(0).all()  # [CLS] x [SEP] then padding


def test_trained_vocabulary_has_words_and_roundtrips(tmp_path):
    caps = ["many planes are parked near the terminal", "a river runs through the green forest"] * 20
    tok = train_wordpiece(caps, vocab_size=150, context_length=12)
    assert "planes" in tok.vocab
    path = tok.save(tmp_path / "vocab.txt")
    again = WordPieceTokenizer(path, context_length=12)
    assert torch.equal(tok(caps[:2]), again(caps[:2]))
    long = again(["plane " * 50])
    assert long.shape == (1, 12) and long[0, -1] == again.vocab.index("[SEP]")


def test_bad_vocabularies_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        WordPieceTokenizer(tmp_path / "nope.txt")
    (tmp_path / "v.txt").write_text("hello\nworld\n")
    with pytest.raises(ConfigError, match="special tokens"):
        WordPieceTokenizer(tmp_path / "v.txt")


def test_clip_tokenizer_uses_bundled_vocabulary():
    ids = ClipTokenizer(context_length=20)(["an aerial image of a harbor"])
    assert ids.shape == (1, 20) and ids[0, 0] == 49406
