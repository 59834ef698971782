"""Inference-only copies of the frozen convolutional prior (open: ModifiedResNet, closed: timm ResNet).

The prior is frozen and kept in eval mode, so at inference its BatchNorm layers are fixed affine
maps that can be folded into the convolutions before them, and its convolutions can run in
channels_last (NHWC) layout, which oneDNN's CPU kernels run faster than NCHW. Both change only
the rounding of the result (about 1e-7). Measured effect, and the options that did not pay:
docs/PERFORMANCE.md.

The optimised copy is never registered as a submodule: state dicts, checkpoints, `parameters()`
and training see only the original prior. It is used only under `torch.no_grad` /
`torch.inference_mode` with the original in eval mode, and is rebuilt when the original's weights,
device or dtype change (a parameter update bumps its version counter; `.to()` gives new storage).
"""
from __future__ import annotations

import contextlib
import copy
import warnings

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class _ConvTracer(fx.Tracer):
    """Traces through modules that hold convolutions and keeps every other module whole, so heads
    that fx cannot trace (e.g. open_clip's AttentionPool2d, which checks shapes) stay as they are."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            return True
        return not any(isinstance(c, nn.Conv2d) for c in m.modules())


def _conv_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` in which only the Conv2d/BatchNorm2d tensors are new; every other tensor
    (e.g. the attention pool's 15 M parameters) is shared with `module` rather than duplicated."""
    memo = {}
    for m in module.modules():
        if not isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)):
                memo[id(t)] = t
    return copy.deepcopy(module, memo)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An eval-mode copy of `module` with each BatchNorm2d folded into the Conv2d that feeds it.

    Pairs come from the traced data flow (torch.fx), not from registration order: a BatchNorm is
    folded only when its sole input is a conv whose output nothing else uses, each called once.
    The fused conv then replaces the conv and an Identity the BatchNorm, so the module keeps its
    own forward (with its in-place residual adds). Tensors outside convs and BatchNorms are shared
    with `module`.
    """
    module = _conv_copy(module).eval()
    graph = _ConvTracer().trace(module)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    modules = dict(module.named_modules())
    pairs = []
    for node in graph.nodes:
        # exact types: subclasses (timm's BatchNormAct2d, StdConv2d, ...) do more than the plain op
        if node.op != "call_module" or type(modules[node.target]) is not nn.BatchNorm2d:
            continue
        src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if (isinstance(src, fx.Node) and src.op == "call_module" and type(modules[src.target]) is nn.Conv2d
                and len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1
                and modules[node.target].track_running_stats):
            pairs.append((src.target, node.target))
    for conv_name, bn_name in pairs:
        _set_submodule(module, conv_name, fuse_conv_bn_eval(modules[conv_name], modules[bn_name]))
        _set_submodule(module, bn_name, nn.Identity())
    return module


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def count_batchnorm(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


class InferencePrior:
    """Callable stand-in for a frozen conv prior at inference: BatchNorm folded, channels_last,
    and optionally compiled.

    `compile=True` runs the copy through `torch.compile` with inductor's freezing (weights become
    constants, which inductor can prepack for oneDNN and fuse with ReLU / residual adds). It pays
    on CPU but costs a compile (a minute or more on 2 cores; inductor caches it on disk for later
    processes) for every new input shape (batch size): worth it for long jobs with a fixed batch
    size, not for a server.
    Deliberately not an nn.Module, so assigning it to a model attribute registers nothing.
    """

    def __init__(self, source: nn.Module, fold: bool = True, channels_last: bool = True, compile: bool = False):
        self.source, self.fold, self.channels_last, self.compile = source, fold, channels_last, compile
        self._key = None
        self._module: nn.Module | None = None
        self._compiled = None
        self.folded = 0
        self.module()  # build now (about a second for a ResNet-50), not in the first request

    def _source_key(self) -> tuple:
        return tuple((t.data_ptr(), t._version, t.dtype, t.device)
                     for t in (*self.source.parameters(), *self.source.buffers()))

    def __deepcopy__(self, memo):
        # a copied model gets a copy built from its own prior (and compiled anew), never shared
        return InferencePrior(copy.deepcopy(self.source, memo), self.fold, self.channels_last, self.compile)

    def __getstate__(self):
        # pickled without the copy (or its compiled code): rebuilt from the prior on first use
        return {**self.__dict__, "_key": None, "_module": None, "_compiled": None}

    def _build(self) -> nn.Module:
        # Built outside inference mode so the copy's tensors are ordinary ones (usable in any mode).
        with torch.inference_mode(False), torch.no_grad():
            before = count_batchnorm(self.source)
            module = None
            if self.fold:
                try:
                    module = fold_batchnorm(self.source)
                except Exception as exc:  # noqa: BLE001 - a prior fx cannot trace still gets channels_last
                    warnings.warn(f"{type(self.source).__name__}: BatchNorm not folded, torch.fx could not trace "
                                  f"it ({type(exc).__name__}: {exc}); using channels_last only", stacklevel=2)
            if module is None:
                module = _conv_copy(self.source).eval()
            self.folded = before - count_batchnorm(module)
            if self.channels_last:  # only the (copied) convs: shared tensors must keep their layout
                for m in module.modules():
                    if isinstance(m, nn.Conv2d):
                        m.to(memory_format=torch.channels_last)
        return module

    def module(self) -> nn.Module:
        """The optimised copy, (re)built if the source changed since the last call."""
        key = self._source_key()
        if self._module is None or key != self._key:
            self._module, self._key = self._build(), key
            # static shapes: a dynamic batch dimension would make inductor pack weights per call
            self._compiled = torch.compile(self._module, dynamic=False) if self.compile else None
        return self._module

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        module = self.module()
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        if self._compiled is not None:
            # freezing is read when a graph is compiled, which happens inside a call: patched here
            # rather than set globally, so the caller's other torch.compile uses are unaffected
            from torch._inductor import config as inductor_config

            with inductor_config.patch(freezing=True):
                return self._compiled(images)
        return module(images)


class InferencePriorMixin:
    """`optimize_for_inference()` for a module whose frozen conv prior is the submodule named by
    `inference_prior_source` (open domain: `res_visual`; closed domain's tower: `model`)."""

    inference_prior_source: str = ""

    def optimize_for_inference(self, enabled: bool = True, *, fold_batchnorm: bool = True,
                               channels_last: bool = True, compile: bool = False):
        """Run the prior through an inference copy (BatchNorm folded, channels_last; `compile=True`:
        also compiled, one compile per batch size) whenever no gradient is wanted and the prior is
        in eval mode; ~1e-7 from the plain path, faster on CPU (docs/PERFORMANCE.md). Parameters,
        state dict and training are unchanged (see `InferencePrior`)."""
        source = getattr(self, self.inference_prior_source)
        # a plain attribute (InferencePrior is not an nn.Module): nothing registered
        self.__dict__["_inference_prior"] = (InferencePrior(source, fold=fold_batchnorm, channels_last=channels_last,
                                                            compile=compile) if enabled else None)
        return self

    @property
    def inference_optimized(self) -> bool:
        return self.__dict__.get("_inference_prior") is not None

    def inference_prior(self) -> InferencePrior | None:
        """The optimised copy if it may stand in for the prior now: no gradient wanted, prior in
        eval mode (BatchNorm on running statistics); else None."""
        fast = self.__dict__.get("_inference_prior")
        source = getattr(self, self.inference_prior_source)
        usable = fast is not None and not torch.is_grad_enabled() and not source.training
        return fast if usable else None


@contextlib.contextmanager
def inference_optimizations(model):
    """Switch a model's inference speed-ups on for a block (`model.optimize_for_inference()`),
    then back to what they were; models without the switch are used as they are."""
    switch = getattr(model, "optimize_for_inference", None)
    turn_on = callable(switch) and not getattr(model, "inference_optimized", True)
    if turn_on:
        switch(True)
    try:
        yield model
    finally:
        if turn_on:
            switch(False)
