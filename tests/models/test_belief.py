import torch

from priorclip.models.belief import belief_scores, hard_belief, rank_weights, soft_belief


def test_belief_is_softmax_of_dot_products():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]])
    prior = torch.tensor([[1.0, 0.0]])
    b = belief_scores(tokens, prior)
    assert torch.allclose(b, torch.softmax(torch.tensor([[1.0, 0.0, 2.0]]), dim=-1))
    assert torch.allclose(belief_scores(tokens, prior.unsqueeze(1)), b)


def test_hard_belief_keeps_exactly_the_top_tokens_in_descending_order():
    torch.manual_seed(0)
    tokens = torch.randn(3, 10, 4)
    belief = torch.rand(3, 10)
    kept = hard_belief(tokens, belief, filter_size=4)
    assert kept.shape == (3, 4, 4)
    for b in range(3):
        order = sorted(range(10), key=lambda t: -belief[b, t].item())[:4]
        assert torch.equal(kept[b], tokens[b, order])


def test_hard_belief_scores_a_prefix_but_gathers_from_all_tokens():
    tokens = torch.arange(12.0).view(1, 6, 2)
    belief = torch.tensor([[0.1, 0.5, 0.4]])  # only the first 3 tokens are scored
    assert torch.equal(hard_belief(tokens, belief, 2)[0], tokens[0, [1, 2]])


def test_hard_belief_rejects_impossible_filter_size():
    import pytest

    with pytest.raises(ValueError, match="filter_size"):
        hard_belief(torch.randn(1, 5, 2), torch.rand(1, 5), 6)


def test_rank_weighting_is_monotone_in_rank():
    belief = torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    w = rank_weights(belief, "rank")[0]
    # ranks: token1 -> 0, token3 -> 1, token2 -> 2, token0 -> 3
    assert torch.allclose(w, torch.tensor([4.0, 1.0, 3.0, 2.0]).rsqrt())
    ranks = torch.argsort(torch.argsort(-belief[0]))
    assert all(w[i] > w[j] for i in range(4) for j in range(4) if ranks[i] < ranks[j])


def test_released_weighting_is_indexed_by_position():
    belief = torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    # order (token ranked t-th) = [1, 3, 2, 0] -> position t weighted by 1/sqrt(order[t] + 1)
    assert torch.allclose(rank_weights(belief, "released")[0], torch.tensor([2.0, 4.0, 3.0, 1.0]).rsqrt())


def test_soft_belief_normalisation_axes():
    torch.manual_seed(1)
    x, b = torch.randn(2, 5, 3), torch.rand(2, 5).softmax(-1)
    released = soft_belief(x, b, "released")
    assert torch.allclose(released.norm(dim=1), torch.ones(2, 3), atol=1e-6)  # across tokens
    rank = soft_belief(x, b, "rank")
    assert torch.allclose(rank.norm(dim=-1), torch.ones(2, 5), atol=1e-6)  # per token
    w = rank_weights(b, "rank")
    expected = torch.nn.functional.normalize(x * (b + w).unsqueeze(-1), dim=-1)
    assert torch.allclose(rank, expected, atol=1e-6)
