"""Tokenizers: WordPiece for the BERT text tower, CLIP BPE for the open_clip text tower.

Nothing is downloaded. A WordPiece vocabulary comes from a `vocab.txt` the user provides (e.g.
bert-base-uncased's, needed for official PIR checkpoints), from `train_wordpiece` on captions
(offline, with the `tokenizers` library), or, when neither is given, from a built-in
character-level vocabulary that tokenizes any English text (every word splits into characters), so a
freshly created model works before a vocabulary is trained. CLIP's BPE vocabulary ships inside the
open_clip package.

How a caption becomes ids is part of the model config (`text_cfg`), so a checkpoint tokenises the
way it was trained: `context_length`, `padding` ("max_length": every row padded to
`context_length`, ours; "longest": to the longest caption of the batch, the released PIR code),
`caption_cleaning` (null, or "xvlm": `clean_caption`, the released PIR code) and `max_words`.
"""
from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Iterable

import torch

from ..errors import ConfigError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PADDINGS = ("max_length", "longest")
CAPTION_CLEANINGS = ("xvlm",)

# X-VLM's `pre_caption` (the PIR code's caption rule, issue #15): these characters are deleted.
_XVLM_DELETED = re.compile(r"[,.'!?\"()*#:;~]")
_XVLM_SPACES = re.compile(r"\s{2,}")


def clean_caption(caption: str, max_words: int | None = 30) -> str:
    """The released PIR code's caption rule (X-VLM's `pre_caption`; issue #15): lower-case; delete
    , . ' ! ? " ( ) * # : ; ~; `-` and `/` become spaces; runs of whitespace become one space;
    strip; keep the first `max_words` words.

    Whitespace follows X-VLM's code exactly (runs of two or more whitespace characters collapse,
    words are counted between spaces), so the 30-word cut falls where the released code's does. A
    caption that cleans to nothing (e.g. "?!") gives "" -- it tokenises to [CLS] [SEP] -- where
    X-VLM's function raises: a search query of punctuation must not stop a server (our choice).
    """
    text = _XVLM_DELETED.sub("", str(caption).lower()).replace("-", " ").replace("/", " ")
    text = _XVLM_SPACES.sub(" ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    if max_words is not None and len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


def tokenizer_options(text_cfg: dict) -> dict:
    """WordPieceTokenizer keyword arguments from a closed model's `text_cfg` (defaults: ours)."""
    return {"context_length": text_cfg.get("context_length", 32), "padding": text_cfg.get("padding", "max_length"),
            "caption_cleaning": text_cfg.get("caption_cleaning"), "max_words": text_cfg.get("max_words")}


def builtin_char_vocab() -> list[str]:
    """A deterministic WordPiece vocabulary of single characters (with ## continuations)."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return SPECIAL_TOKENS + chars + ["##" + c for c in string.ascii_lowercase + string.digits]


class WordPieceTokenizer:
    """Lower-cased WordPiece, [CLS] ... [SEP], truncated to `context_length`, padded with id 0 to
    `context_length` (padding="max_length") or to the batch's longest row (padding="longest");
    captions first cleaned by `clean_caption` when caption_cleaning="xvlm"."""

    def __init__(self, vocab: str | Path | list[str] | None = None, context_length: int = 32,
                 padding: str = "max_length", caption_cleaning: str | None = None, max_words: int | None = None):
        from tokenizers import BertWordPieceTokenizer

        if padding not in PADDINGS:
            raise ConfigError(f"text_cfg.padding={padding!r}; choose one of {PADDINGS}")
        if caption_cleaning is not None and caption_cleaning not in CAPTION_CLEANINGS:
            raise ConfigError(f"text_cfg.caption_cleaning={caption_cleaning!r}; choose null or one of {CAPTION_CLEANINGS}")

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
        self.context_length, self.padding = context_length, padding
        self.caption_cleaning, self.max_words = caption_cleaning, max_words
        self._tok = BertWordPieceTokenizer({t: i for i, t in enumerate(self.vocab)}, lowercase=True)
        self._tok.enable_truncation(max_length=context_length)
        self._tok.enable_padding(length=context_length if padding == "max_length" else None, pad_id=0, pad_token="[PAD]")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def options(self) -> dict:
        return {"context_length": self.context_length, "padding": self.padding,
                "caption_cleaning": self.caption_cleaning, "max_words": self.max_words}

    def configured(self, **options) -> WordPieceTokenizer:
        """This vocabulary with other options (self when nothing changes): the model's `text_cfg`
        decides how captions are tokenised, a tokenizer passed in only brings its vocabulary."""
        merged = {**self.options, **options}
        return self if merged == self.options else WordPieceTokenizer(self.vocab, **merged)

    def __call__(self, texts: str | Iterable[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        texts = [str(t) for t in texts]
        if self.caption_cleaning == "xvlm":
            texts = [clean_caption(t, self.max_words) for t in texts]
        encodings = self._tok.encode_batch(texts)
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
