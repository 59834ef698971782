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
    """Build a lower-cased WordPiece vocabulary from captions, offline and deterministically.

    The vocabulary is the special tokens, every ASCII letter, digit and punctuation mark (alone and
    as a ## continuation, so any word still splits into known pieces), then the most frequent
    words (ties broken alphabetically) up to `vocab_size`. The `tokenizers` WordPiece trainer is
    not used because its tie-breaking differs between processes, which would make two runs with
    the same seed differ.
    """
    from collections import Counter

    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalizer, pre = BertNormalizer(lowercase=True), BertPreTokenizer()
    counts: Counter = Counter()
    for caption in captions:
        counts.update(word for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(str(caption))))
    vocab = builtin_char_vocab()
    vocab += ["##" + c for c in string.punctuation]
    known = set(vocab)
    words = sorted((w for w, n in counts.items() if n >= min_frequency and w not in known), key=lambda w: (-counts[w], w))
    vocab += words[: max(0, vocab_size - len(vocab))]
    return WordPieceTokenizer(vocab, context_length=context_length)


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
