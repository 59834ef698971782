"""Losses against hand-computed small cases, edge cases, and the distributed global-batch equality."""
import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from priorclip.models.losses import PriorCLIPLoss, affiliation_loss, class_centres, contrastive_loss, triplet_loss


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_contrastive_pairs_hand_computed():
    i, t = _unit([1, 0], [0, 1]), _unit([1, 0], [0, 1])
    # logits = [[1, 0], [0, 1]] / 0.5 -> each CE = -log(e^2 / (e^2 + 1))
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert contrastive_loss(i, t, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_multi_positive_targets_are_uniform_over_same_image():
    i = _unit([1, 0], [1, 0], [0, 1])
    t = _unit([1, 0], [1, 0], [0, 1])
    ids = torch.tensor([0, 0, 1])
    logits = (i @ t.t()) / 1.0
    lsm = logits.log_softmax(1)
    row0 = -(0.5 * lsm[0, 0] + 0.5 * lsm[0, 1])
    row2 = -lsm[2, 2]
    expected = ((row0 + row0 + row2) / 3).item()  # symmetric matrix: both directions equal
    assert contrastive_loss(i, t, 1.0, image_ids=ids).item() == pytest.approx(expected, rel=1e-6)


def test_class_centres_and_affiliation_hand_case():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    c = class_centres(f, labels)
    assert torch.allclose(c, torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, 1.0]]))
    i, t = _unit([1, 0], [0, 1], [1, 1]), _unit([1, 0], [0, 1], [1, 1])
    tc = class_centres(t, labels)
    logits = i @ tc.t() / 0.1
    loss_i = F.cross_entropy(logits, torch.arange(3))
    ic = class_centres(i, labels)
    loss_t = F.cross_entropy(ic @ t.t() / 0.1, torch.arange(3))
    assert affiliation_loss(i, t, labels, 0.1).item() == pytest.approx(0.5 * (loss_i + loss_t).item(), rel=1e-6)


def test_affiliation_single_sample_class_and_unlabelled_items():
    torch.manual_seed(0)
    i, t = F.normalize(torch.randn(5, 4), dim=-1), F.normalize(torch.randn(5, 4), dim=-1)
    labels = torch.tensor([0, 0, 1, -1, -1])  # class 1 has one sample; two items unlabelled
    loss = affiliation_loss(i, t, labels, 0.07)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(affiliation_loss(i[:3], t[:3], labels[:3], 0.07).item(), rel=1e-6)
    none = affiliation_loss(i.requires_grad_(), t, torch.full((5,), -1), 0.07)
    assert none.item() == 0.0
    none.backward()  # still differentiable
    assert i.grad is not None and torch.all(i.grad == 0)


def test_triplet_sum_and_hardest_hand_case():
    i, t = _unit([1, 0], [0, 1]), _unit([1, 0], [0.6, 0.8])
    # scores = [[1, .6], [0, .8]]; diag = [1, .8]; margin .2
    # caption negatives (rows): row0: .2+.6-1 = -.2 -> 0; row1: .2+0-.8 -> 0
    # image negatives (cols): col0: .2+0-1 -> 0 ; col1: .2+.6-.8 = 0.0 -> 0
    assert triplet_loss(i, t, 0.2).item() == pytest.approx(0.0, abs=1e-6)
    assert triplet_loss(i, t, 0.5).item() == pytest.approx(0.1 + 0.3, abs=1e-6)
    assert triplet_loss(i, t, 0.5, hardest=True).item() == pytest.approx(0.1 + 0.3, abs=1e-6)
    i3, t3 = _unit([1, 0], [0, 1], [1, 1]), _unit([1, 0], [0, 1], [1, 1])
    assert triplet_loss(i3, t3, 0.5, hardest=True).item() < triplet_loss(i3, t3, 0.5).item()


def test_priorclip_loss_combines_terms():
    torch.manual_seed(0)
    i, t = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    ids, labels = torch.tensor([0, 0, 1, 2, 3, 3]), torch.tensor([0, 0, 1, 1, -1, 2])
    out = PriorCLIPLoss(affiliation_weight=0.5)(i, t, 0.07, 0.1, image_ids=ids, scene_labels=labels)
    assert out["total"].item() == pytest.approx(
        contrastive_loss(i, t, 0.07, ids).item() + 0.5 * affiliation_loss(i, t, labels, 0.1).item(), rel=1e-6)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(fi, ft, ids, labels):
    return [contrastive_loss(fi, ft, 0.07), contrastive_loss(fi, ft, 0.07, ids), affiliation_loss(fi, ft, labels, 0.1),
            triplet_loss(fi, ft), triplet_loss(fi, ft, hardest=True)]


def _data():
    torch.manual_seed(0)
    return (torch.randn(8, 5), torch.randn(8, 5), torch.tensor([0, 0, 1, 2, 3, 3, 4, 5]),
            torch.tensor([0, 0, 1, 1, -1, 2, 2, 0]))


def _towers():
    torch.manual_seed(1)
    return torch.nn.Linear(5, 6), torch.nn.Linear(5, 6)


def _worker(rank, world, port, result_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x_img, x_txt, ids, labels = _data()
    img, txt = (DDP(m) for m in _towers())
    sl = slice(rank * 4, rank * 4 + 4)
    fi, ft = F.normalize(img(x_img[sl]), dim=-1), F.normalize(txt(x_txt[sl]), dim=-1)
    losses = _losses(fi, ft, ids[sl], labels[sl])
    local = PriorCLIPLoss(affiliation_centres="local")(fi, ft, 0.07, 0.1, image_ids=ids[sl], scene_labels=labels[sl])
    sum(losses).backward()  # DDP averages the gradients of the two ranks
    torch.save({"losses": [x.item() for x in losses], "grad": img.module.weight.grad, "grad_t": txt.module.weight.grad,
                "local_affiliation": local["affiliation"].item(), "local_contrastive": local["contrastive"].item()},
               f"{result_path}.{rank}")
    dist.destroy_process_group()


def test_distributed_losses_equal_single_process(tmp_path):
    """Two gloo processes with half the batch each give the global-batch losses and, after DDP's
    gradient averaging, the same parameter gradients as one process holding the whole batch."""
    import torch.multiprocessing as mp

    port, path = _free_port(), str(tmp_path / "res")
    mp.spawn(_worker, args=(2, port, path), nprocs=2, join=True)
    x_img, x_txt, ids, labels = _data()
    img, txt = _towers()
    losses = _losses(F.normalize(img(x_img), dim=-1), F.normalize(txt(x_txt), dim=-1), ids, labels)
    sum(losses).backward()
    with torch.no_grad():
        fi, ft = F.normalize(img(x_img), dim=-1), F.normalize(txt(x_txt), dim=-1)
    for rank in range(2):
        res = torch.load(f"{path}.{rank}")
        assert res["losses"] == pytest.approx([x.item() for x in losses], rel=1e-5)
        # affiliation_centres="local" (the released behaviour): centres and candidates of this rank's
        # half only, while the contrastive term stays global
        sl = slice(rank * 4, rank * 4 + 4)
        half = affiliation_loss(fi[sl], ft[sl], labels[sl], 0.1).item()
        assert res["local_affiliation"] == pytest.approx(half, rel=1e-5)
        assert abs(res["local_affiliation"] - losses[2].item()) > 1e-3
        assert res["local_contrastive"] == pytest.approx(losses[1].item(), rel=1e-5)
        assert torch.allclose(res["grad"], img.weight.grad, atol=1e-5)
        assert torch.allclose(res["grad_t"], txt.weight.grad, atol=1e-5)
