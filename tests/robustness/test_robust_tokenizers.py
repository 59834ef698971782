"""Hostile queries: the tokenizers return fixed-length ids, and small models give finite embeddings."""
from __future__ import annotations

import pytest
import torch

import priorclip.models as pm

QUERIES = {
    "empty": "",
    "whitespace": " \t\n \u00a0\u3000 ",
    "100kB": "dense residential area with a road " * 3000,
    "chinese": "机场跑道旁边停着几架飞机",
    "arabic": "طائرات متوقفة بجانب المدرج",
    "emoji": "✈️🛫🏙️🌊 " * 5,
    "control": "a\x00b\x01c\x07\x1b[31mred\x7f\u200b\u202e road",
    "mixed": "runway 跑道 مدرج 🛬 RUNWAY",
}


@pytest.fixture(scope="module", params=["priorclip-closed-small", "priorclip-open-small"])
def model(request):
    torch.manual_seed(0)
    return pm.create_model(request.param).eval()


def test_hostile_queries_give_fixed_length_ids_and_finite_embeddings(model):
    ctx = model.tokenizer.context_length
    texts = list(QUERIES.values())
    ids = model.tokenize(texts)
    assert ids.shape == (len(texts), ctx) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < model.tokenizer.vocab_size
    with torch.inference_mode():
        emb = model.encode_text(ids, normalize=True)
    assert emb.shape == (len(texts), model.embed_dim) and torch.isfinite(emb).all()
    assert torch.allclose(emb.norm(dim=-1), torch.ones(len(texts)), atol=1e-4)


def test_long_caption_is_truncated_with_the_end_token_last(model):
    ids = model.tokenize([QUERIES["100kB"], "a road"])
    ctx = model.tokenizer.context_length
    if model.model_config["architecture"].startswith("closed"):
        sep, cls = model.tokenizer.vocab.index("[SEP]"), model.tokenizer.vocab.index("[CLS]")
        assert ids[0, 0] == cls and ids[0, -1] == sep and (ids[0] != 0).all()  # full, [SEP] kept at the end
        n = int((ids[1] != 0).sum())
        assert ids[1, n - 1] == sep and n < ctx
    else:
        eot = model.tokenizer._tok.eot_token_id
        assert ids[0, -1] == eot and (ids[0] != 0).all()


def test_empty_query_still_has_the_special_tokens(model):
    ids = model.tokenize(["", "   "])
    assert (ids[0] == ids[1]).all() and int((ids[0] != 0).sum()) == 2  # start + end token only
