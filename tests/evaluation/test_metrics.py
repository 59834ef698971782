"""Retrieval recall with tie rules: hand cases, exhaustive/Monte-Carlo checks of "expected",
agreement with clip_benchmark where no ties exist, the released-code order, validation."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from priorclip.errors import ConfigError, DataError
from priorclip.evaluation.metrics import (
    TIE_RULES,
    MetricInputError,
    format_recall_table,
    normalize_caption,
    recall_metrics,
    recall_report,
    similarity_matrix,
    tie_statistics,
)

KS = (1, 2, 3)

# Image 0: captions 0,1,2; image 1: captions 3,4.
# Row 0: best positives t1,t2 at 0.9, one wrong (t3) tied with them, one wrong (t4) above;
#        t0 is a positive at a lower level (must not matter).
# Row 1: positive t3 at 0.7 tied with two wrong captions (t0, t1); t4 positive lower.
# Column t0: its image (0) ties with image 1 (t2i tie); other columns have no ties.
HAND_S = np.array(
    [[0.7, 0.9, 0.9, 0.9, 0.95],
     [0.7, 0.7, 0.1, 0.7, 0.2]],
    dtype=np.float32,
)
HAND_T2I = np.array([0, 0, 0, 1, 1])
HAND_EXPECTED = {
    # i2t per image (K=1,2,3): img0 above=1, m=2, w=1; img1 above=0, m=1, w=2
    #   optimistic: img0 0,1,1  img1 1,1,1     pessimistic: img0 0,0,1  img1 0,0,1
    #   expected:   img0 0,2/3,1  img1 1/3,2/3,1   index: img0 0,1,1  img1 rank 3 -> 0,0,1
    # t2i: t0 ties (above=0, w=1): opt 1, pess 0 at K=1, expected 1/2, index 1 (image 0 first);
    #   t1, t2 rank 1; t3, t4 rank 2.
    "optimistic": {"i2t_r1": 50.0, "i2t_r2": 100.0, "i2t_r3": 100.0, "t2i_r1": 60.0, "t2i_r2": 100.0, "t2i_r3": 100.0},
    "pessimistic": {"i2t_r1": 0.0, "i2t_r2": 0.0, "i2t_r3": 100.0, "t2i_r1": 40.0, "t2i_r2": 100.0, "t2i_r3": 100.0},
    "expected": {"i2t_r1": 100 / 6, "i2t_r2": 200 / 3, "i2t_r3": 100.0, "t2i_r1": 50.0, "t2i_r2": 100.0, "t2i_r3": 100.0},
    "index": {"i2t_r1": 0.0, "i2t_r2": 50.0, "i2t_r3": 100.0, "t2i_r1": 60.0, "t2i_r2": 100.0, "t2i_r3": 100.0},
}


def released_reference(scores: np.ndarray, t2i: np.ndarray, ks=KS) -> dict[str, float]:
    """The authors' evaluation loops (i2t over images, t2i over texts of input.T), generalised
    from '5 consecutive captions per image' to an explicit text_to_image list."""
    n_img, n_txt = scores.shape
    ranks = np.zeros(n_img)
    for index in range(n_img):
        inds = np.argsort(scores[index])[::-1]
        rank = 1e20
        for i in np.flatnonzero(t2i == index):
            tmp = np.where(inds == i)[0][0]
            if tmp < rank:
                rank = tmp
        ranks[index] = rank
    d = scores.T
    ranks_t = np.zeros(n_txt)
    for j in range(n_txt):
        inds = np.argsort(d[j])[::-1]
        ranks_t[j] = np.where(inds == t2i[j])[0][0]
    out = {f"i2t_r{k}": 100.0 * np.mean(ranks < k) for k in ks}
    out.update({f"t2i_r{k}": 100.0 * np.mean(ranks_t < k) for k in ks})
    return out


def clip_benchmark_recall(scores: np.ndarray, t2i: np.ndarray, ks=(1, 5, 10), batch_size=7) -> dict[str, float]:
    """clip_benchmark's computation (zeroshot_retrieval.evaluate) on a given score matrix."""
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k

    s = torch.as_tensor(scores).T.contiguous()  # clip_benchmark: texts x images
    positive_pairs = torch.zeros_like(s, dtype=torch.bool)
    positive_pairs[torch.arange(len(s)), torch.as_tensor(t2i)] = True
    out = {}
    for k in ks:
        # clip_benchmark's "text retrieval" is image -> text (i2t)
        out[f"i2t_r{k}"] = 100 * (batchify(recall_at_k, s.T, positive_pairs.T, batch_size, "cpu", k=k) > 0).float().mean().item()
        out[f"t2i_r{k}"] = 100 * (batchify(recall_at_k, s, positive_pairs, batch_size, "cpu", k=k) > 0).float().mean().item()
    return out


def random_case(rng, n_img, per_image, dim=16, levels=None, dtype=np.float64):
    """Random scores; `levels` quantises them to that many values (many exact ties)."""
    t2i = rng.permutation(np.repeat(np.arange(n_img), per_image))
    s = rng.standard_normal((n_img, n_img * per_image))
    s[t2i, np.arange(len(t2i))] += 1.0  # some signal so recalls are not all tiny
    if levels is not None:
        s = np.floor((s - s.min()) / (s.max() - s.min() + 1e-9) * levels)
    return s.astype(dtype), t2i


def permuted(scores, t2i, rng):
    """The same retrieval problem with images and texts listed in a random order."""
    ip = rng.permutation(scores.shape[0])
    tp = rng.permutation(scores.shape[1])
    inv = np.argsort(ip)
    return scores[ip][:, tp], inv[t2i[tp]]


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["optimistic", "pessimistic", "expected", "index"])
def test_hand_case_every_rule(rule):
    got = recall_metrics(HAND_S, HAND_T2I, ks=KS, ties=rule)
    want = HAND_EXPECTED[rule]
    assert list(got) == ["i2t_r1", "i2t_r2", "i2t_r3", "t2i_r1", "t2i_r2", "t2i_r3", "mr"]
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["mr"] == pytest.approx(np.mean(list(want.values())), abs=1e-9)


def test_hand_case_released_matches_authors_loop_and_bounds():
    got = recall_metrics(HAND_S, HAND_T2I, ks=KS, ties="released")
    ref = released_reference(HAND_S, HAND_T2I)
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-9), key
        assert HAND_EXPECTED["pessimistic"][key] <= got[key] <= HAND_EXPECTED["optimistic"][key]


def test_expected_equals_mean_over_all_orders_exactly():
    """Exhaustive: every order of texts and images, ties broken by that order ("index")."""
    s = np.array(
        [[0.5, 0.5, 0.5, 0.5, 0.5, 0.2],
         [0.5, 0.3, 0.5, 0.5, 0.1, 0.5],
         [0.4, 0.4, 0.4, 0.9, 0.4, 0.4]],
        dtype=np.float32,
    )
    t2i = np.array([0, 1, 0, 2, 1, 0])  # image 0: 3 positives tied with 2 wrong at 0.5
    ks = (1, 2, 3, 4)
    total = None
    count = 0
    for tp in itertools.permutations(range(6)):
        for ip in itertools.permutations(range(3)):
            ip = np.array(ip)
            tp = np.array(tp)
            m = recall_metrics(s[ip][:, tp], np.argsort(ip)[t2i[tp]], ks=ks, ties="index")
            total = m if total is None else {k: total[k] + m[k] for k in m}
            count += 1
    mean = {k: v / count for k, v in total.items()}
    got = recall_metrics(s, t2i, ks=ks, ties="expected")
    for key in got:
        assert got[key] == pytest.approx(mean[key], abs=1e-9), key
    # the case really is tie-dependent
    assert recall_metrics(s, t2i, ks=ks, ties="optimistic")["i2t_r1"] > got["i2t_r1"]


def test_expected_hypergeometric_closed_form_large_groups():
    """All scores equal: image 0 has 3 captions among 2003 tied texts, image 1 has 2000."""
    t2i = np.array([0] * 3 + [1] * 2000)
    s = np.zeros((2, len(t2i)), dtype=np.float32)
    ks = (1, 4, 10, 500)
    got = recall_metrics(s, t2i, ks=ks, ties="expected")
    for k in ks:
        p0 = 1 - math.comb(2000, k) / math.comb(2003, k)
        p1 = 1 - math.comb(3, k) / math.comb(2003, k)
        assert got[f"i2t_r{k}"] == pytest.approx(100 * (p0 + p1) / 2, rel=1e-12, abs=1e-12)
        # t2i: every text's image ties with the other one: rank uniform over {1, 2}
        assert got[f"t2i_r{k}"] == pytest.approx(50.0 if k == 1 else 100.0)


def test_expected_agrees_with_random_tie_breaking_monte_carlo():
    rng = np.random.default_rng(7)
    s, t2i = random_case(rng, n_img=15, per_image=3, levels=6, dtype=np.float32)
    ks = (1, 3, 5)
    expected = recall_metrics(s, t2i, ks=ks, ties="expected")
    opt = recall_metrics(s, t2i, ks=ks, ties="optimistic")
    pess = recall_metrics(s, t2i, ks=ks, ties="pessimistic")
    assert any(opt[k] - pess[k] > 5 for k in opt), "case must have ties that matter"
    trials = [recall_metrics(*permuted(s, t2i, rng), ks=ks, ties="index") for _ in range(1500)]
    for key in expected:
        values = np.array([t[key] for t in trials])
        se = values.std(ddof=1) / math.sqrt(len(values))
        assert abs(values.mean() - expected[key]) <= 3.5 * se + 1e-9, (key, values.mean(), expected[key], se)
        assert pess[key] - 1e-9 <= expected[key] <= opt[key] + 1e-9


def test_every_rule_equals_clip_benchmark_without_ties():
    rng = np.random.default_rng(0)
    s, t2i = random_case(rng, n_img=40, per_image=5, dtype=np.float64)
    assert len(np.unique(s)) == s.size  # no ties at all
    ref = clip_benchmark_recall(s, t2i)
    for rule in TIE_RULES:
        got = recall_metrics(s, t2i, ties=rule)
        for key in ref:
            assert got[key] == pytest.approx(ref[key], abs=1e-4), (rule, key)


def test_random_float32_case_matches_clip_benchmark_and_torch_input():
    rng = np.random.default_rng(3)
    img = rng.standard_normal((60, 32)).astype(np.float32)
    t2i = np.repeat(np.arange(60), 5)
    txt = (img[t2i] + 2 * rng.standard_normal((300, 32))).astype(np.float32)
    s = torch.nn.functional.normalize(torch.from_numpy(img), dim=-1) @ torch.nn.functional.normalize(
        torch.from_numpy(txt), dim=-1
    ).T
    ref = clip_benchmark_recall(s.numpy(), t2i)
    got = recall_metrics(s, torch.from_numpy(t2i))
    assert 0 < got["t2i_r1"] < 100 and 0 < got["i2t_r1"] < 100
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-4), key
    assert recall_metrics(s.numpy(), t2i) == got
    # bfloat16 scores: evaluated exactly as given (widening to float32 keeps every value and tie)
    s16 = s.to(torch.bfloat16)
    assert recall_metrics(s16, t2i, ties="pessimistic") == recall_metrics(s16.float().numpy(), t2i, ties="pessimistic")


def test_ties_bounds_order_and_released_matches_authors_loop():
    rng = np.random.default_rng(11)
    s, t2i = random_case(rng, n_img=60, per_image=5, levels=12, dtype=np.float32)
    report = recall_report(s, t2i, ks=KS)
    ref = released_reference(s, t2i)
    for key in report["expected"]:
        lo, mid, hi = report["pessimistic"][key], report["expected"][key], report["optimistic"][key]
        assert lo - 1e-9 <= mid <= hi + 1e-9, key
        for rule in ("index", "released"):
            assert lo - 1e-9 <= report[rule][key] <= hi + 1e-9, (rule, key)
    assert report["optimistic"]["i2t_r1"] > report["expected"]["i2t_r1"] > report["pessimistic"]["i2t_r1"]
    for key in ref:
        assert report["released"][key] == pytest.approx(ref[key], abs=1e-9), key
    assert report["numpy_version"] == np.__version__


def test_caption_text_positives_hand_case():
    captions = ["A plane.", "two planes", "a plane", "a runway", "a field", "green  field ."]
    t2i = np.array([0, 0, 1, 1, 2, 2])
    s = np.array(
        [[0.5, 0.4, 0.8, 0.1, 0.2, 0.3],
         [0.9, 0.1, 0.2, 0.3, 0.0, 0.05],
         [0.1, 0.2, 0.3, 0.4, 0.6, 0.7]],
        dtype=np.float32,
    )
    by_index = recall_metrics(s, t2i, ks=(1,))
    by_text = recall_metrics(s, t2i, ks=(1,), positives="caption-text", captions=captions)
    assert by_index["i2t_r1"] == pytest.approx(100 / 3)
    assert by_text["i2t_r1"] == pytest.approx(100.0)
    assert by_index["t2i_r1"] == pytest.approx(50.0)
    assert by_text["t2i_r1"] == pytest.approx(500 / 6)  # only "a runway" (t3) still misses
    assert normalize_caption("  Green   FIELD . ") == "green field"


def test_caption_text_positives_resolve_identical_caption_ties():
    """Two images with the same caption: the tie is no longer between right and wrong."""
    captions = ["a dense residential area", "a dense residential area", "a river"]
    t2i = np.array([0, 1, 1])
    s = np.array([[0.8, 0.8, 0.1], [0.6, 0.6, 0.9]], dtype=np.float32)
    # index relevance: image 0's caption ties with image 1's identical caption
    assert recall_metrics(s, t2i, ks=(1,), ties="pessimistic")["i2t_r1"] == 50.0
    assert recall_metrics(s, t2i, ks=(1,), ties="expected")["i2t_r1"] == 75.0
    assert recall_metrics(s, t2i, ks=(1,), ties="optimistic")["t2i_r1"] == pytest.approx(200 / 3)
    for rule in TIE_RULES:
        m = recall_metrics(s, t2i, ks=(1,), ties=rule, positives="caption-text", captions=captions)
        assert m["i2t_r1"] == 100.0, rule
        assert m["t2i_r1"] == 100.0, rule


def test_tie_statistics():
    s = np.array(
        [[0.5, 0.5, 0.1, 0.3, 0.0],
         [0.2, 0.2, 0.9, 0.4, -0.0],
         [0.2, 0.2, 0.9, 0.4, 0.0]],
        dtype=np.float32,
    )
    t2i = np.array([0, 1, 2, 2, 0])
    captions = ["a farm", "a farm", "a road", "A road.", "a pond"]
    stats = tie_statistics(s, t2i, captions=captions)
    assert stats["tied_caption_pct"] == pytest.approx(40.0)  # texts 0 and 1 (identical columns)
    assert stats["tied_image_pct"] == pytest.approx(200 / 3)  # images 1 and 2 (0.0 == -0.0)
    # image 0: best positive t0 (0.5) tied with wrong t1 -> ambiguous; image 1: t1 (0.2) tied with
    # t0 -> ambiguous; image 2: best positive t2 (0.9) alone -> not ambiguous.
    assert stats["i2t_ambiguous_query_pct"] == pytest.approx(200 / 3)
    # text queries: images 1 and 2 tie in every column, so t1..t4 are ambiguous; t0's image 0 is alone
    assert stats["t2i_ambiguous_query_pct"] == pytest.approx(80.0)
    assert stats["duplicate_caption_pct"] == pytest.approx(80.0)  # a farm x2, a road x2
    assert stats["shared_caption_pct"] == pytest.approx(40.0)  # only "a farm" spans two images
    report = recall_report(s, t2i, captions=captions)
    assert report["ties"] == stats


def test_custom_ks_keys_and_format_table():
    report = recall_report(HAND_S, HAND_T2I, ks=KS)
    table = format_recall_table(report).splitlines()
    assert table[0] == "| i2t R@1 | R@2 | R@3 | t2i R@1 | R@2 | R@3 | mR |"
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[0] == "16.67 [0.00–50.00]"
    assert cells[2] == "100.00"  # R@3: bounds agree, no range shown
    assert cells[3] == "50.00 [40.00–60.00]"
    assert len(cells) == 7
    index_table = format_recall_table(report, rule="index").splitlines()[2]
    assert index_table.startswith("| 0.00 [0.00–50.00] | 50.00 [0.00–100.00] |")
    with pytest.raises(ConfigError):
        format_recall_table(report, rule="best")


def test_duplicate_captions_are_not_deduplicated():
    """Two identical caption queries count twice, as in the published protocol."""
    s = np.array([[0.9, 0.9, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    t2i = np.array([0, 0, 1])
    m = recall_metrics(s, t2i, ks=(1,))
    assert m["t2i_r1"] == 100.0
    s2 = s.copy()
    s2[:, :2] = [[0.1], [0.2]]  # both duplicates now miss: 1 of 3 queries hits
    assert recall_metrics(s2, t2i, ks=(1,))["t2i_r1"] == pytest.approx(100 / 3)


@pytest.mark.parametrize(
    "scores, t2i, kwargs, error, words",
    [
        (np.zeros((2, 3)), [0, 1], {}, MetricInputError, "2 entries but similarity has 3 texts"),
        (np.zeros((2, 3)), [0, 1, 2], {}, MetricInputError, "text_to_image[2] = 2 is out of range"),
        (np.zeros((2, 3)), [0, -1, 1], {}, MetricInputError, "text_to_image[1] = -1"),
        (np.zeros((3, 3)), [0, 0, 2], {}, MetricInputError, "no caption in text_to_image (image index 1)"),
        (np.array([[0.1, np.nan], [0.2, 0.3]]), [0, 1], {}, MetricInputError, "NaN score(s) (first at image 0, text 1)"),
        (np.zeros(3), [0, 0, 0], {}, MetricInputError, "2-D"),
        (np.zeros((0, 3)), [0, 0, 0], {}, MetricInputError, "empty"),
        (np.zeros((2, 2)), [0.5, 1], {}, MetricInputError, "integer image indices"),
        (np.zeros((2, 2)), [0, 1], {"ties": "random"}, ConfigError, "unknown tie rule 'random'"),
        (np.zeros((2, 2)), [0, 1], {"positives": "caption-text"}, ConfigError, "needs captions"),
        (np.zeros((2, 2)), [0, 1], {"positives": "caption-text", "captions": ["a"]}, MetricInputError, "captions has 1"),
        (np.zeros((2, 2)), [0, 1], {"ks": (0, 5)}, ConfigError, "positive integers"),
    ],
)
def test_input_validation(scores, t2i, kwargs, error, words):
    with pytest.raises(error) as info:
        recall_metrics(scores, t2i, **kwargs)
    assert words in str(info.value)
    assert isinstance(info.value, (DataError, ConfigError))


def test_rsicd_size_all_rules_finish():
    """1,093 images x 5,465 texts with injected identical captions; timing is in benchmarks/."""
    rng = np.random.default_rng(5)
    n_img = 1093
    t2i = np.repeat(np.arange(n_img), 5)
    img = rng.standard_normal((n_img, 32)).astype(np.float32)
    txt = img[t2i] + 3 * rng.standard_normal((len(t2i), 32)).astype(np.float32)
    s = img @ txt.T
    dup = rng.choice(len(t2i), 600, replace=False)
    s[:, dup] = s[:, rng.choice(len(t2i), 600)]  # identical captions -> identical score columns
    report = recall_report(s, t2i)
    for rule in TIE_RULES:
        assert set(report[rule]) == {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mr"}
        assert report["pessimistic"]["mr"] <= report[rule]["mr"] <= report["optimistic"]["mr"]
    assert report["ties"]["n_texts"] == 5465
    assert report["ties"]["tied_caption_pct"] > 10
    assert report["optimistic"]["i2t_r1"] > report["pessimistic"]["i2t_r1"]


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_similarity_matrix_gives_identical_captions_identical_scores(kind):
    rng = np.random.default_rng(2)
    img = rng.standard_normal((300, 256)).astype(np.float32)
    txt = rng.standard_normal((1500, 256)).astype(np.float32)
    order = rng.permutation(1500)
    src, dst = order[:200], order[200:400]
    txt[dst] = txt[src]
    img[[5, 250]] = img[7]
    txt[dst[:3]] = -0.0  # -0.0 and 0.0 rows: equal embeddings
    txt[src[:3]] = 0.0
    if kind == "torch":
        s = similarity_matrix(torch.from_numpy(img), torch.from_numpy(txt))
        assert isinstance(s, torch.Tensor)
        plain = (torch.from_numpy(img) @ torch.from_numpy(txt).T).numpy()
        s = s.numpy()
    else:
        s = similarity_matrix(img, txt)
        plain = img @ txt.T
    assert s.shape == (300, 1500)
    np.testing.assert_array_equal(s[:, dst], s[:, src])  # bit-identical, not merely close
    np.testing.assert_array_equal(s[[5, 250]], s[[7, 7]])
    np.testing.assert_allclose(s, plain, rtol=1e-4, atol=1e-4)  # same products, other rounding
    with pytest.raises(MetricInputError):
        similarity_matrix(img, txt[:, :10])
