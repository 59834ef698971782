"""Tokenizers: WordPiece for the BERT text tower, CLIP BPE for the open_clip text tower.

Nothing is downloaded. A WordPiece vocabulary comes from a `vocab.txt` the user provides (e.g.
bert-base-uncased's, needed for official PIR checkpoints), from `train_wordpiece` on captions
(offline, with the `tokenizers` library), or, when neither is given, from a built-in
character-level vocabulary that tokenizes any English text (every word splits into characters), so a
freshly created model works before a vocabulary is trained. CLIP's BPE vocabulary ships inside the
open_clip package.
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Iterable

import torch

from ..errors import ConfigError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def builtin_char_vocab() -> list[str]:
    """A deterministic WordPiece vocabulary of single characters (with ## continuations)."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return SPECIAL_TOKENS + chars + ["##" + c for c in string.ascii_lowercase + string.digits]


class WordPieceTokenizer:
    """Lower-cased WordPiece, [CLS] ... [SEP], padded/truncated to `context_length` (pad id 0)."""

    def __init__(self, vocab: str | Path | list[str] | None = None, context_length: int = 32):
        from tokenizers import BertWordPieceTokenizer

        if vocab is None:
            vocab = builtin_char_vocab()
        if isinstance(vocab, (str, Path)):
            path = Path(vocab)
            if not path.is_file():
                raise ConfigError(f"WordPiece vocabulary file {path} does not exist (a vocab.txt with one token a line)")
            vocab = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
        self.vocab = list(vocab)
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in self.vocab]
        if missing:
            raise ConfigError(f"WordPiece vocabulary lacks the special tokens {missing}")
        if self.vocab[0] != "[PAD]":
            raise ConfigError("WordPiece vocabulary must have [PAD] as token 0 (the text tower pads with id 0)")
        self.context_length = context_length
        self._tok = BertWordPieceTokenizer({t: i for i, t in enumerate(self.vocab)}, lowercase=True)
        self._tok.enable_truncation(max_length=context_length)
        self._tok.enable_padding(length=context_length, pad_id=0, pad_token="[PAD]")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __call__(self, texts: str | Iterable[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        encodings = self._tok.encode_batch([str(t) for t in texts])
        return torch.tensor([e.ids for e in encodings], dtype=torch.long)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text("\n".join(self.vocab) + "\n", encoding="utf-8")
        return path


def train_wordpiece(captions: Iterable[str], vocab_size: int = 8000, min_frequency: int = 1,
                    context_length: int = 32) -> WordPieceTokenizer:
    """Train a lower-cased WordPiece vocabulary on captions, offline. Includes every ASCII letter
    and digit so unseen words still split into known pieces."""
    from tokenizers import BertWordPieceTokenizer

    trainer = BertWordPieceTokenizer(lowercase=True)
    alphabet = list(string.ascii_lowercase + string.digits + string.punctuation)
    trainer.train_from_iterator((str(c) for c in captions), vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet, show_progress=False)
    vocab = sorted(trainer.get_vocab().items(), key=lambda kv: kv[1])
    return WordPieceTokenizer([t for t, _ in vocab], context_length=context_length)


class ClipTokenizer:
    """open_clip's BPE tokenizer (bundled vocabulary), fixed `context_length`."""

    def __init__(self, context_length: int = 77):
        from open_clip.tokenizer import SimpleTokenizer

        self.context_length = context_length
        self._tok = SimpleTokenizer(context_length=context_length)
        self.vocab_size = len(self._tok.encoder)

    def __call__(self, texts: str | Iterable[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return self._tok([str(t) for t in texts], context_length=self.context_length)
