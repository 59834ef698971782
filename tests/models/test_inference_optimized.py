"""optimize_for_inference: the frozen prior's inference copy (BatchNorm folded, channels_last)
gives the plain model's embeddings, and leaves parameters, state dict and training alone."""
import pytest
import torch
from torch import nn

from priorclip.models import create_model, inference_optimizations
from priorclip.models.inference import fold_batchnorm

ATOL = 1e-5


def _randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Fresh BatchNorms are identity maps (and open_clip zero-inits each block's last one), so
    folding them would prove nothing: give every one non-trivial statistics and affine terms."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def _prior(model) -> nn.Module:
    return model.res_visual if hasattr(model, "res_visual") else model.prior.model


@pytest.fixture(params=["priorclip-open-small", "priorclip-closed-small"])
def model_and_images(request):
    torch.manual_seed(0)
    model = create_model(request.param).eval()
    _randomize_batchnorm(_prior(model))
    size = model.model_config["vision_cfg"]["image_size"]
    return model, torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_optimized_model_gives_the_plain_embeddings(model_and_images):
    model, images = model_and_images
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        plain = model.encode_image(images, normalize=True)
    assert not model.inference_optimized
    assert model.optimize_for_inference() is model and model.inference_optimized
    for mode in (torch.inference_mode, torch.no_grad):
        with mode():
            fast = model.encode_image(images, normalize=True)
        assert (fast - plain).abs().max().item() <= ATOL
    # the copy really differs from the plain prior: no BatchNorm left, convs in channels_last
    fast_prior = model.__dict__.get("_inference_prior") or model.prior.__dict__["_inference_prior"]
    copy = fast_prior.module()
    assert fast_prior.folded > 0 and not any(isinstance(m, nn.BatchNorm2d) for m in copy.modules())
    convs = [m for m in copy.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    # nothing registered, nothing changed
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    model.optimize_for_inference(False)
    assert not model.inference_optimized


def test_copy_follows_weight_changes(model_and_images):
    model, images = model_and_images
    model.optimize_for_inference()
    with torch.inference_mode():
        before = model.encode_image(images, normalize=True)
    with torch.no_grad():
        for m in _prior(model).modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.mul_(4.0)  # an in-place update, as load_state_dict or an optimizer makes
    model.optimize_for_inference(False)
    with torch.inference_mode():
        plain = model.encode_image(images, normalize=True)
    model.optimize_for_inference()
    with torch.inference_mode():
        fast = model.encode_image(images, normalize=True)
    assert (plain - before).abs().max().item() > 1e-3  # the update matters...
    assert (fast - plain).abs().max().item() <= ATOL  # ...and the copy was rebuilt


def test_training_path_is_the_plain_prior():
    torch.manual_seed(0)
    model = create_model("priorclip-open-small", vision_cfg={"prior_frozen": False}).optimize_for_inference()
    _randomize_batchnorm(model.res_visual)
    model.train()
    size = model.model_config["vision_cfg"]["image_size"]
    model.encode_image(torch.randn(2, 3, size, size), normalize=True).sum().backward()
    assert model.res_visual.conv1.weight.grad is not None  # gradients reach the real prior


def test_inference_optimizations_restores_the_switch():
    model = create_model("priorclip-open-small")
    with inference_optimizations(model):
        assert model.inference_optimized
    assert not model.inference_optimized
    model.optimize_for_inference()
    with inference_optimizations(model):
        pass
    assert model.inference_optimized  # already on: left on
    with inference_optimizations(nn.Linear(2, 2)) as plain:  # models without the switch pass through
        assert isinstance(plain, nn.Linear)


class _BatchNormAct(nn.BatchNorm2d):
    """Like timm's BatchNormAct2d: a BatchNorm subclass that does more than normalise."""

    def forward(self, x):
        return torch.relu(super().forward(x))


def test_fold_pairs_by_data_flow_and_skips_shared_conv_outputs():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn_a = nn.BatchNorm2d(4)   # registered before its conv
            self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
            self.conv_b = nn.Conv2d(4, 4, 1)
            self.bn_b = nn.BatchNorm2d(4)   # conv_b's output also feeds the residual: not foldable
            self.conv_c = nn.Conv2d(4, 4, 1)
            self.bn_c = _BatchNormAct(4)    # a subclass: not folded (its ReLU would be lost)

        def forward(self, x):
            x = torch.relu(self.bn_a(self.conv_a(x)))
            y = self.conv_b(x)
            return self.bn_c(self.conv_c(self.bn_b(y) + y)) - 0.5

    net = Net().eval()
    _randomize_batchnorm(net)
    folded = fold_batchnorm(net)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert (folded(x) - net(x)).abs().max().item() <= ATOL
    kept = [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(kept) == 2 and isinstance(folded.bn_a, nn.Identity)


@pytest.mark.slow
def test_compiled_prior_gives_the_plain_embeddings():
    """optimize_for_inference(compile=True): inductor with freezing on the folded copy."""
    torch.manual_seed(0)
    model = create_model("priorclip-open-small").eval()
    _randomize_batchnorm(model.res_visual)
    size = model.model_config["vision_cfg"]["image_size"]
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        plain = model.encode_image(images, normalize=True)
        fast = model.optimize_for_inference(compile=True).encode_image(images, normalize=True)
    assert (fast - plain).abs().max().item() <= ATOL


def test_search_encoder_switches_it_on():
    from priorclip.search.encoders import ModelEncoder

    model = create_model("priorclip-closed-small")
    assert not model.inference_optimized
    assert ModelEncoder(model).model.inference_optimized


def test_copies_and_pickles_of_an_optimized_model_build_their_own(model_and_images):
    import copy
    import pickle

    model, images = model_and_images
    model.optimize_for_inference()
    with torch.inference_mode():
        want = model.encode_image(images, normalize=True)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert other.inference_optimized
        with torch.no_grad():
            for m in _prior(other).modules():  # the copy's prior changes; the original's must not
                if isinstance(m, nn.BatchNorm2d):
                    m.running_var.mul_(4.0)
        with torch.inference_mode():
            assert (model.encode_image(images, normalize=True) - want).abs().max().item() <= ATOL
            other.optimize_for_inference(False)
            plain = other.encode_image(images, normalize=True)
            other.optimize_for_inference()
            fast = other.encode_image(images, normalize=True)
        assert (plain - want).abs().max().item() > 1e-3 and (fast - plain).abs().max().item() <= ATOL


def test_untraceable_prior_falls_back_to_channels_last():
    from priorclip.models.inference import InferencePrior

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return self.bn(self.conv(x))

    net = Untraceable().eval()
    with pytest.warns(UserWarning, match="BatchNorm not folded"):
        fast = InferencePrior(net)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert fast.folded == 0 and (fast(x) - net(x)).abs().max().item() <= ATOL
