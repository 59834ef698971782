"""The training loop for every stage (see docs/TRAINING.md): `Trainer` and `train`.

Stages: `prior` (a model's prior tower as a scene classifier: the closed model's ResNet or the
open model's ModifiedResNet), `closed` (closed-domain PriorCLIP or its baseline), `pretrain` and
`finetune` (open domain; finetune freezes the prior and the text tower and caches the text
embeddings). Every contrastive stage adds `affiliation_weight` x the Attribution loss when the
training data carry scene labels (paper Sec. 3.4; stage 2 of the open domain, Sec. 3.5).

Exact resume: the order of the data in an epoch is a function of (seed, epoch) only and each
sample's augmentation is drawn from (seed, epoch, index) (`data.epoch_batches`,
`data.SeededSamples`), so skipping the first k batches of an epoch reproduces what an
uninterrupted run sees; optimizer, scheduler, scaler and RNG states come from `train_state.pt`.
Validation runs inside `torch.random.fork_rng`, so it never shifts the training RNG.

Shards (`data.shards`): training reads a resampled webdataset stream instead; an epoch is
`data.epoch_samples` samples and the stream is seeded from (seed, epoch, rank, worker), each
sample's augmentation from its position in the stream, so a resume anywhere, mid-epoch included,
continues the uninterrupted stream exactly (the batches already seen are skipped undecoded).

Frozen prior (open or closed domain) with `data.augment: false`: the prior's output for an image
is the same every epoch, so it is computed once per image and cached (`prior.PriorCache`).

The rest lives beside this module, split as open_clip_train splits its trainer: `distributed`
(torchrun's process group), `data` (seeded epochs, shard lists), `prior` (the frozen prior run
once per image, precise BatchNorm), `optim` (parameter groups, LR schedule, temperature clamp),
`logger` (run.json, log.jsonl) and `checkpointing` (atomic checkpoint directories, RNG state).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from priorclip.errors import CheckpointError, ConfigError
from priorclip.training import checkpointing as ck
from priorclip.training.data import (SeededSamples, collate, epoch_batches, mix_seed, resolve_shards, shard_keys,
                                     split_dataset)
from priorclip.training.distributed import barrier, init_distributed
from priorclip.training.logger import Logger, environment
from priorclip.training.optim import clamp_temperatures, lr_lambda, param_groups
from priorclip.training.prior import PriorCache, frozen_prior, prior_input, recalibrate_batchnorm, same_weights
from priorclip.training.recipe import Recipe, dump_recipe, load_recipe, parse_set, recipe_from_dict

log = logging.getLogger(__name__)

# Text-tower parameter prefixes per architecture (frozen by finetune).
_TEXT_PREFIXES = {"open": ("token_embedding", "positional_embedding", "transformer.", "ln_final", "text_projection"),
                  "open-baseline": ("token_embedding", "positional_embedding", "transformer.", "ln_final", "text_projection"),
                  "closed": ("text.",), "closed-baseline": ("text.",)}


# ---- model ----------------------------------------------------------------------------------

class _Forward(nn.Module):
    """What DDP wraps: every trainable tensor the loss uses (temperatures too) comes out of forward,
    so DDP sees it in the autograd graph."""

    def __init__(self, model: nn.Module, stage: str):
        super().__init__()
        self.model, self.stage = model, stage

    def forward(self, images, tokens=None, text_features=None, prior_features=None):
        if self.stage == "prior":
            return self.model(images)
        m = self.model
        if prior_features is not None and hasattr(m, "vision_proj_res"):
            # open domain: cached res_visual output; the projection may still train
            img = m.encode_image(images, normalize=True, instruction=m.vision_proj_res(prior_features))
        elif prior_features is not None:  # closed domain: the frozen prior's output; conv_proj trains
            img = m.embed_image_tokens(m.visual(images), prior_features)
        else:
            img = m.encode_image(images, normalize=True)
        if text_features is None:
            text_features = m.encode_text(tokens, normalize=True)
        if self.stage == "closed":
            # clone(): a bare leaf parameter as an output is invisible to DDP's unused-parameter search
            t2 = getattr(m, "temp2", None)
            return img, text_features, m.temp.clone(), None if t2 is None else t2.clone()
        return img, text_features, m.temperature, None


class Trainer:
    def __init__(self, recipe: Recipe, run_dir: Path, resume: bool = False):
        self.recipe, self.run_dir, self.resume = recipe, Path(run_dir), resume
        r = recipe
        kind = "cuda" if (r.device == "auto" and torch.cuda.is_available()) or r.device.startswith("cuda") else "cpu"
        self.info = init_distributed(kind)
        if kind == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError("recipe key 'device': cuda requested but no CUDA device is available")
            idx = self.info.local_rank if self.info.enabled or ":" not in r.device else int(r.device.split(":")[1])
            self.device = torch.device("cuda", idx)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if r.precision == "fp16" and kind != "cuda":
            raise ConfigError("recipe key 'precision': fp16 autocast needs CUDA; use bf16 or fp32 on CPU")
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.main = self.info.is_main

    # -- building --------------------------------------------------------------------------

    def _tokenizer(self, train_ds):
        """Closed models: the run's saved vocab.txt (resume), the recipe's vocab, or one trained now
        on the training captions -- decided on rank 0 and broadcast, so every process of a
        multi-node run uses rank 0's token ids even where rank 0's files are not visible."""
        import priorclip.models as pm

        r = self.recipe
        ctx = pm.get_model_config(r.model)["text_cfg"].get("context_length", 32) if isinstance(r.model, str) else 32
        ctx = r.model_overrides.get("text_cfg", {}).get("context_length", ctx)
        saved = self.run_dir / "vocab.txt"
        vocab = None
        if self.main:
            if self.resume and saved.is_file():  # the run's own copy: the run continues with the same ids
                vocab = pm.WordPieceTokenizer(saved, context_length=ctx).vocab
            else:
                # NB: tokenizers' trainer breaks frequency ties differently in each process, so the
                # vocabulary (and the run) is only reproducible through the saved vocab.txt.
                tok = pm.WordPieceTokenizer(r.vocab, context_length=ctx) if r.vocab is not None else \
                    pm.train_wordpiece(train_ds.all_captions, vocab_size=r.vocab_size, context_length=ctx)
                tmp = saved.with_suffix(".tmp")
                tok.save(tmp)
                os.replace(tmp, saved)
                vocab = tok.vocab
        if self.info.enabled:
            box = [vocab]
            dist.broadcast_object_list(box, src=0)
            vocab = box[0]
        return pm.WordPieceTokenizer(vocab, context_length=ctx)

    def build(self) -> None:
        import priorclip.models as pm

        r = self.recipe
        ck.seed_everything(r.seed)
        stage = r.stage
        if stage == "prior":
            from priorclip.errors import CheckpointError
            from priorclip.models.factory import merge_config
            from priorclip.models.transforms import transform_from_config

            base = merge_config(pm.get_model_config(r.model), r.model_overrides)
            try:
                prior_cfg = ck.prior_spec(base)
            except CheckpointError as exc:
                raise ConfigError(f"recipe key 'model': {exc}") from None
            # the model's own input preset (mean/std, resize mode, augmentation), as its other stages use
            tf = transform_from_config(base, train=r.data.augment, aug=r.data.aug)
            self.eval_tf = transform_from_config(base, train=False)
            self.train_ds = split_dataset(r, r.data.train_split, tf, "images")
            classes = self.train_ds.classes
            if not classes or all(l < 0 for l in self.train_ds.labels):
                raise ConfigError(f"data.labels={r.data.labels!r} gives no scene label to any training image")
            self.classes = classes
            self.model = ck.PriorClassifier(prior_cfg, len(classes))
        else:
            self.shard_urls = resolve_shards(r.data.shards) if r.data.shards is not None else None
            probe = split_dataset(r, r.data.train_split, None, "pairs") if self.shard_urls is None else None
            if stage == "finetune":
                self.model = pm.load_checkpoint(r.init_checkpoint)
            else:
                arch = pm.get_model_config(r.model)["architecture"]
                if stage == "closed" and not arch.startswith("closed"):
                    raise ConfigError(f"recipe key 'model': stage closed needs a closed-domain model, {r.model} is {arch}")
                if stage == "pretrain" and not arch.startswith("open"):
                    raise ConfigError(f"recipe key 'model': stage pretrain needs an open-domain model, {r.model} is {arch}")
                tok = self._tokenizer(probe) if arch.startswith("closed") else None
                self.model = pm.create_model(r.model, tokenizer=tok, **r.model_overrides)
                if r.init_checkpoint:
                    init = pm.load_checkpoint(r.init_checkpoint)
                    self.model.load_state_dict(init.state_dict())
                    del init
            if r.prior_checkpoint:
                ck.load_prior_into(self.model, r.prior_checkpoint)
            elif stage == "closed" and hasattr(self.model, "prior") and self.model.prior.frozen and self.main:
                log.warning("closed stage without prior_checkpoint: the frozen prior keeps its RANDOM init")
            arch = self.model.model_config["architecture"]
            if stage == "finetune" and not r.train_all:
                if hasattr(self.model, "set_prior_frozen"):
                    self.model.set_prior_frozen(True)
                for name, p in self.model.named_parameters():
                    if name.startswith(_TEXT_PREFIXES[arch]):
                        p.requires_grad_(False)
            self.text_frozen = not any(p.requires_grad for n, p in self.model.named_parameters()
                                       if n.startswith(_TEXT_PREFIXES[arch]))
            classes = probe.classes if probe is not None else []
            if stage == "closed" and not (r.affiliation_weight and classes) and hasattr(self.model, "temp2"):
                self.model.temp2.requires_grad_(False)  # unused: keep DDP from waiting for its gradient
            self.train_tf = self.model.image_transform(train=r.data.augment, aug=r.data.aug)
            if self.shard_urls is not None:
                self.train_ds = None  # a stream (see _shard_loader); shards carry no scene labels
                self.use_labels = False
            else:
                # training never stops on a bad image: it is reported and replaced by the next readable one
                self.train_ds = split_dataset(r, r.data.train_split, self.train_tf,
                                         "pairs" if r.data.captions == "all" else "images", on_error="skip")
                self.use_labels = bool(r.affiliation_weight) and bool(self.train_ds.classes)
        self.model.to(self.device)
        # frozen prior (closed stage, or an open model's res_visual): run it outside the autograd
        # graph (with the model's inference copy: BatchNorm folded, channels_last on CPU), once per
        # image when cached (_prior_cache)
        self.prior_fn = frozen_prior(self.model) if stage != "prior" else None
        if self.prior_fn is not None and callable(getattr(self.model, "optimize_for_inference", None)):
            self.model.optimize_for_inference()
        self._eval_priors: dict = {}
        self.val_ds = self._optional_split(r.data.val_split)
        self.test_ds = self._optional_split(r.data.test_split)

    def _optional_split(self, split):
        from priorclip.errors import DataError

        if not split or self.recipe.data.path is None:
            return None
        try:
            return split_dataset(self.recipe, split, None, "images")
        except DataError as exc:
            if self.main:
                log.warning("split %r not used: %s", split, exc)
            return None

    # -- evaluation ------------------------------------------------------------------------

    def evaluate(self, model: nn.Module, dataset) -> dict:
        """Validation/test metrics; `score` is what model selection maximises."""
        r = self.recipe
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if r.stage == "prior":
                return self._evaluate_classifier(model, dataset)
            from priorclip.evaluation.encode import evaluate_model

            report = evaluate_model(model, dataset, batch_size=r.eval_batch_size, device=self.device,
                                    workers=min(r.workers, 2), image_encoder=self._eval_image_encoder(model, dataset))
            report["score"] = report["expected"]["mr"]
            return report

    def _eval_image_encoder(self, model: nn.Module, dataset):
        """Closed stage with a frozen prior: `(images, image_ids) -> image embeddings` that runs the
        prior on each evaluation image once per run (the evaluation transform is fixed, so its output
        is the same at every validation) and reuses it, also for the best checkpoint's test report
        when its prior has the same weights. None otherwise (evaluate_model's own encode_image)."""
        prior = frozen_prior(model) if self.recipe.stage == "closed" else None
        if prior is None or not hasattr(model, "embed_image_tokens"):
            return None
        entry = self._eval_priors.get(dataset.split)
        if entry is None or not same_weights(entry[0], model.prior):
            entry = self._eval_priors[dataset.split] = (model.prior, PriorCache(dataset.num_images, self.device))
        cache = entry[1]

        def encode(images: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
            return model.embed_image_tokens(model.visual(images), cache.features(prior, images, image_ids))
        return encode

    def _recalibrate_batchnorm(self, wrapped, epoch: int) -> None:
        """`recalibrate_batchnorm` on `bn_recalibrate_batches` train batches; rank 0's statistics
        are shared with every rank."""
        r = self.recipe
        batches = epoch_batches(len(self.train_ds), r.batch_size, r.seed + 7919, epoch, self.info)
        loader = DataLoader(wrapped, batch_sampler=batches[:r.bn_recalibrate_batches], num_workers=r.workers,
                            collate_fn=collate)
        norms = recalibrate_batchnorm(self.model, (prior_input(images.to(self.device)) for images, _ in loader))
        if self.info.enabled:
            for m in norms:
                for buf in (m.running_mean, m.running_var, m.num_batches_tracked):
                    dist.broadcast(buf, 0)

    def _evaluate_classifier(self, model, dataset) -> dict:
        from priorclip.evaluation.encode import images_view

        view = images_view(dataset, self.eval_tf)
        loader = DataLoader(view, batch_size=self.recipe.eval_batch_size, num_workers=min(self.recipe.workers, 2),
                            collate_fn=lambda b: (torch.stack([s["image"] for s in b]), torch.tensor([s["label"] for s in b])))
        was = model.training
        model.eval()
        correct = total = 0
        with torch.inference_mode():
            for images, labels in loader:
                keep = labels >= 0
                if not keep.any():
                    continue
                pred = model(prior_input(images.to(self.device))).argmax(1).cpu()
                correct += int((pred[keep] == labels[keep]).sum())
                total += int(keep.sum())
        model.train(was)
        acc = 100.0 * correct / max(total, 1)
        return {"accuracy": acc, "n_labelled": total, "score": acc, "split": dataset.split}

    # -- checkpoints -----------------------------------------------------------------------

    def _save_model(self, directory: Path, extra: dict) -> None:
        import priorclip.models as pm

        if self.recipe.stage == "prior":
            ck.save_prior(self.model, directory, self.classes, extra)
        else:
            pm.save_checkpoint(self.model, directory, extra=extra)

    def save(self, name: str, position: dict, with_state: bool = True) -> None:
        """Write checkpoints/<name>/ atomically (rank 0); `last` also holds the training state."""
        if self.main:
            final = self.ckpt_dir / name
            tmp = ck.staging_dir(final)
            self._save_model(tmp, {"step": self.step, "epoch": position["epoch"], "run_dir": str(self.run_dir)})
            if with_state:
                state = {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                         "scaler": self.scaler.state_dict(), "rng": ck.rng_state(), "step": self.step,
                         "best_score": self.best_score, "history": self.history, **position}
                torch.save(state, tmp / ck.TRAIN_STATE)
            ck.publish_dir(tmp, final)
        barrier(self.info)

    def _load_resume(self) -> dict:
        last = ck.find_checkpoint(self.ckpt_dir / "last")
        if last is None or not (last / ck.TRAIN_STATE).is_file():
            raise CheckpointError(f"--resume {self.run_dir}: no complete checkpoint in {self.ckpt_dir / 'last'}")
        from safetensors.torch import load_file

        if self.recipe.stage == "prior":
            self.model.prior.load_state_dict(load_file(str(last / ck.PRIOR_WEIGHTS)))
            self.model.head.load_state_dict(load_file(str(last / ck.PRIOR_HEAD)))
        else:
            from priorclip.models.checkpoints import load_weights_strict, read_state_dict

            load_weights_strict(self.model, read_state_dict(last / "model.safetensors"), source=str(last))
        # our own file in our own run directory: the one place a full unpickle is acceptable
        return torch.load(last / ck.TRAIN_STATE, map_location="cpu", weights_only=False)

    # -- the loop --------------------------------------------------------------------------

    def _text_cache(self) -> torch.Tensor | None:
        """Frozen text tower: embed every distinct training caption once (row = caption_id)."""
        if self.recipe.stage in ("prior", "closed") or not self.text_frozen or self.train_ds is None:
            return None
        from priorclip.evaluation.encode import encode_texts

        was = self.model.training
        self.model.eval()
        with torch.inference_mode():
            cache = encode_texts(self.model, self.train_ds.all_captions, batch_size=256, device=self.device)
        self.model.train(was)
        return cache.clone()

    def _prior_cache(self, logger) -> PriorCache | None:
        """A `PriorCache` when the prior (open or closed domain) is frozen and the images never
        change, else None (with one log line saying why when only the augmentation or the shards
        prevent it)."""
        r = self.recipe
        if r.stage == "prior" or not r.cache_prior or frozen_prior(self.model) is None:
            return None  # no prior, or a trained one: its output changes every step
        why = ("data.augment is true: each epoch sees a new crop of an image, so the frozen prior runs on every batch"
               if r.data.augment else
               "data.shards: a resampled stream has no image ids, so the frozen prior runs on every batch"
               if self.train_ds is None else None)
        if why:
            if self.main:
                log.info("prior cache off: %s", why)
            logger.write({"event": "note", "step": self.step, "prior_cache": False, "message": why})
            return None
        n_images = self.train_ds.num_images
        logger.write({"event": "note", "step": self.step, "prior_cache": True,
                      "message": f"frozen prior cached once per image ({n_images} images, data.augment false)"})
        return PriorCache(n_images, self.device)

    def _shard_loader(self, epoch: int, start_micro: int, n_batches: int):
        """This rank's `n_batches` micro-batches of epoch `epoch` from the resampled shard stream.

        Shards are drawn with replacement per (rank, worker) by webdataset's ResampledShards, seeded
        from (seed, epoch, rank, worker); augmentation is seeded per sample from its position in the
        stream. The stream of an epoch is therefore a function of (seed, epoch, rank, workers), and
        a run resumed at micro-batch `start_micro` continues it exactly: the batches already trained
        on are skipped as raw tar members, without decoding (see `make_shard_pipeline`).
        """
        from itertools import islice

        from priorclip.data.shards import make_shard_pipeline

        r = self.recipe
        seed = mix_seed(r.seed, epoch)
        pipe = make_shard_pipeline(self.shard_urls, transforms=self.train_tf, tokenize=None, batch_size=r.batch_size,
                                   resampled=True, seed=seed % (1 << 31), shuffle_buffer=r.data.shuffle_buffer,
                                   rank=self.info.rank, world_size=self.info.world_size, start_batch=start_micro,
                                   sample_seed=seed % (1 << 31), **shard_keys(r.data))
        # with_epoch counts per worker: each yields its share (one spare), the loader interleaves them
        pipe = pipe.with_epoch(math.ceil(n_batches / max(1, r.workers)) + 1)
        loader = DataLoader(pipe, batch_size=None, num_workers=r.workers, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(mix_seed(seed, self.info.rank) % (1 << 63)))
        for images, captions in islice(loader, n_batches):
            yield images, list(captions), None, None, None

    def _loss(self, fwd, batch, text_cache, loss_fn, prior_cache=None):
        r = self.recipe
        if r.stage == "prior":
            images, labels = batch
            logits = fwd(prior_input(images.to(self.device, non_blocking=True)))
            loss = F.cross_entropy(logits.float(), labels.to(self.device), ignore_index=-1)
            return {"total": loss, "ce": loss}
        images, captions, image_ids, caption_ids, labels = batch
        images = images.to(self.device, non_blocking=True)
        prior = None
        if prior_cache is not None:
            prior = prior_cache.features(frozen_prior(self.model), images, image_ids)
        elif getattr(self, "prior_fn", None) is not None:
            with torch.no_grad():
                prior = self.prior_fn(images)
        if text_cache is not None:
            img, txt, t1, t2 = fwd(images, text_features=text_cache[caption_ids.to(text_cache.device)].to(self.device),
                                   prior_features=prior)
        else:
            tokens = self.model.tokenize(captions).to(self.device, non_blocking=True)
            img, txt, t1, t2 = fwd(images, tokens, prior_features=prior)
        if r.affiliation_temperature is not None:
            t2 = torch.tensor(r.affiliation_temperature, device=self.device)
        return loss_fn(img.float(), txt.float(), t1.float(), None if t2 is None else t2.float(),
                       image_ids=None if image_ids is None else image_ids.to(self.device),
                       scene_labels=labels.to(self.device) if getattr(self, "use_labels", False) else None)

    def fit(self) -> dict:
        import priorclip.models as pm
        from tqdm import tqdm

        r, info = self.recipe, self.info
        self.build()
        if self.train_ds is None:  # shards: an epoch is data.epoch_samples samples over all processes
            n_items, what = r.data.epoch_samples, "data.epoch_samples"
            steps_per_epoch = r.data.epoch_samples // (r.batch_size * info.world_size) // r.grad_accum
        else:
            n_items, what = len(self.train_ds), "training items"
            steps_per_epoch = len(epoch_batches(len(self.train_ds), r.batch_size, r.seed, 0, info)) // r.grad_accum
        if steps_per_epoch == 0:
            raise ConfigError(f"data: {n_items} {what} over {info.world_size} process(es) are "
                              f"fewer than batch_size x grad_accum = {r.batch_size * r.grad_accum}; lower batch_size")
        total_steps = steps_per_epoch * r.epochs
        self.opt = torch.optim.AdamW(param_groups(self.model, r.weight_decay), lr=r.lr, betas=tuple(r.betas), eps=r.eps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(total_steps, r.warmup_steps, r.schedule,
                                                                           r.min_lr_ratio))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=r.precision == "fp16")
        self.step, self.best_score, self.history = 0, None, []
        start_epoch, start_micro = 0, 0
        if self.resume:
            state = self._load_resume()
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.step, self.best_score, self.history = state["step"], state["best_score"], state["history"]
            start_epoch, start_micro = state["epoch"], state["micro"]
            ck.set_rng_state(state["rng"])
        text_cache = self._text_cache()
        if self.train_ds is None and self.text_frozen and r.stage != "closed" and self.main:
            log.info("data.shards: captions are not a fixed set, so the frozen text tower runs on every batch")
        loss_fn = pm.PriorCLIPLoss(affiliation_weight=r.affiliation_weight,
                                   affiliation_centres=r.affiliation_centres)
        fwd = _Forward(self.model, r.stage)
        if info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            fwd = nn.parallel.DistributedDataParallel(fwd, device_ids=ids, find_unused_parameters=True)
        logger = Logger(self.run_dir if self.main else None, r.tensorboard)
        logger.write({"event": "resume" if self.resume else "start", "step": self.step, "epoch": start_epoch,
                      "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                      "data": "shards" if self.train_ds is None else "dataset",
                      "params_trainable": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                      "params_total": sum(p.numel() for p in self.model.parameters())})
        prior_cache = self._prior_cache(logger)
        wrapped = None if self.train_ds is None else SeededSamples(
            self.train_ds, r.seed, images_only=r.stage == "prior", one_caption=r.stage != "prior" and r.data.captions == "one")
        autocast = dict(device_type=self.device.type, dtype=torch.bfloat16 if r.precision == "bf16" else torch.float16,
                        enabled=r.precision != "fp32")
        micro_per_epoch = steps_per_epoch * r.grad_accum
        last_saved = self.step if self.resume else -1
        self.model.train()
        for epoch in range(start_epoch, r.epochs):
            self.epoch = epoch
            skip = start_micro if epoch == start_epoch else 0
            if wrapped is None:
                loader = self._shard_loader(epoch, skip, micro_per_epoch - skip)
            else:
                wrapped.epoch = epoch
                batches = epoch_batches(len(self.train_ds), r.batch_size, r.seed, epoch, info)[:micro_per_epoch]
                loader = DataLoader(wrapped, batch_sampler=batches[skip:], num_workers=r.workers, collate_fn=collate,
                                    pin_memory=self.device.type == "cuda",
                                    generator=torch.Generator().manual_seed(r.seed + epoch))
            epoch_losses: list[float] = []
            bar = tqdm(total=steps_per_epoch, initial=skip // r.grad_accum, desc=f"epoch {epoch + 1}/{r.epochs}",
                       disable=not self.main, dynamic_ncols=True, mininterval=1.0)
            t0, seen, acc = time.time(), 0, {}
            for micro, batch in enumerate(loader, start=skip):
                boundary = (micro + 1) % r.grad_accum == 0
                sync = fwd.no_sync() if info.enabled and not boundary else contextlib.nullcontext()
                with sync:
                    with torch.autocast(**autocast):
                        losses = self._loss(fwd, batch, text_cache, loss_fn, prior_cache)
                    self.scaler.scale(losses["total"] / r.grad_accum).backward()
                for k, v in losses.items():
                    acc[k] = acc.get(k, 0.0) + float(v.detach()) / r.grad_accum
                seen += len(batch[0]) * info.world_size
                if not boundary:
                    continue
                self.scaler.unscale_(self.opt)
                grad_norm = None
                if r.grad_clip:
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(
                        [p for g in self.opt.param_groups for p in g["params"]], r.grad_clip))
                self.scaler.step(self.opt)
                self.scaler.update()
                self.opt.zero_grad(set_to_none=True)
                self.sched.step()
                clamp_temperatures(self.model)
                self.step += 1
                epoch_losses.append(acc["total"])
                lr = self.opt.param_groups[0]["lr"]
                rate = seen / max(time.time() - t0, 1e-9)
                bar.set_postfix(loss=f"{acc['total']:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}")
                bar.update(1)
                if self.step % r.log_every == 0 or self.step == 1:
                    rec = {"event": "train", "step": self.step, "epoch": epoch, "lr": lr, "samples_per_s": rate,
                           **{f"loss_{k}": v for k, v in acc.items()}}
                    if grad_norm is not None:
                        rec["grad_norm"] = grad_norm
                    logger.write(rec)
                acc = {}
                in_epoch = micro + 1
                if r.save_every_steps and self.step % r.save_every_steps == 0 and in_epoch < micro_per_epoch:
                    self.save("last", {"epoch": epoch, "micro": in_epoch})
                    last_saved = self.step
            bar.close()
            if r.stage == "prior" and r.bn_recalibrate_batches and wrapped is not None:
                self._recalibrate_batchnorm(wrapped, epoch)
            mean_loss = float(np.mean(epoch_losses)) if epoch_losses else None
            # seconds of this epoch's training loop (data loading included, validation and saving not)
            record = {"event": "epoch", "step": self.step, "epoch": epoch, "mean_loss": mean_loss,
                      "train_s": round(time.time() - t0, 3), "samples": seen}
            if skip:  # resumed mid-epoch: train_s and samples cover this process's part only
                record["samples_before_resume"] = skip * r.batch_size * info.world_size
            is_last = epoch + 1 == r.epochs
            if self.val_ds is not None and ((r.eval_every and (epoch + 1) % r.eval_every == 0) or is_last):
                if self.main:
                    val = self.evaluate(self.model, self.val_ds)
                    record["val_score"] = val["score"]
                    if self.best_score is None or val["score"] > self.best_score:
                        self.best_score = val["score"]
                        record["new_best"] = True
                        tmp = ck.staging_dir(self.ckpt_dir / "best")
                        self._save_model(tmp, {"step": self.step, "epoch": epoch, "val_score": val["score"],
                                               "selected_on": self.val_ds.split})
                        ck.publish_dir(tmp, self.ckpt_dir / "best")
                barrier(info)
            self.history.append(record)
            logger.write(record)
            if self.step != last_saved or is_last:
                self.save("last", {"epoch": epoch + 1, "micro": 0})
                last_saved = self.step
        results = self._final_reports() if self.main else {}
        logger.write({"event": "end", "step": self.step, **{k: v for k, v in results.items() if isinstance(v, float)}})
        logger.close()
        barrier(info)
        return results

    def _final_reports(self) -> dict:
        """Test report of the val-selected (best) and the last checkpoint, JSON + markdown."""
        import priorclip.models as pm
        from priorclip.evaluation.metrics import format_recall_table

        out = {"history": self.history, "best_val_score": self.best_score, "steps": self.step}
        if self.test_ds is not None:
            models = {"last": self.model}
            best_dir = self.ckpt_dir / "best"
            if best_dir.is_dir():
                if self.recipe.stage == "prior":
                    models["best"] = ck.load_prior_classifier(best_dir)[0].to(self.device)
                else:
                    models["best"] = pm.load_checkpoint(best_dir, map_location=str(self.device))
            for name, model in models.items():
                report = self.evaluate(model, self.test_ds)
                (self.run_dir / f"test_{name}.json").write_text(json.dumps(report, indent=2) + "\n")
                if self.recipe.stage == "prior":
                    md = f"| accuracy | n |\n|---:|---:|\n| {report['accuracy']:.2f} | {report['n_labelled']} |\n"
                else:
                    md = format_recall_table(report) + "\n"
                (self.run_dir / f"test_{name}.md").write_text(f"# {name} checkpoint on split {self.test_ds.split}\n\n{md}")
                out[f"test_{name}_score"] = report["score"]
        (self.run_dir / "metrics.json").write_text(json.dumps(out, indent=2) + "\n")
        return out


def train(recipe: Recipe | None = None, out_dir: str | Path | None = None, resume: str | Path | None = None,
          sets: list[str] | None = None) -> Path:
    """Run (or resume) one training run; returns the run directory."""
    if resume is not None:
        run_dir = Path(resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise CheckpointError(f"--resume {run_dir}: no config.yaml there; is it a run directory of `priorclip train`?")
        recipe = load_recipe(saved, sets)
    elif recipe is None:
        raise ConfigError("give a recipe or --resume RUN_DIR")
    else:
        if sets:
            recipe = recipe_from_dict(dataclasses.asdict(recipe), parse_set(sets))
        run_dir = Path(out_dir or recipe.out_dir)
        if out_dir is not None:
            recipe = dataclasses.replace(recipe, out_dir=str(out_dir))
        if ck.find_checkpoint(run_dir / "checkpoints" / "last") is not None:
            raise ConfigError(f"run directory {run_dir} already holds a run; continue it with --resume {run_dir} "
                              f"or choose another --out")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # DataLoader workers fork after tokenizing
    trainer = Trainer(recipe, run_dir, resume=resume is not None)
    if trainer.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        if resume is None:
            (run_dir / "config.yaml").write_text(dump_recipe(recipe))
            (run_dir / "run.json").write_text(json.dumps(environment(trainer.info, trainer.device), indent=2) + "\n")
    barrier(trainer.info)
    trainer.fit()
    return run_dir
