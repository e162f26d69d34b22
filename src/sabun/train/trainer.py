"""`sabun train`: one LoRA, trained on top of the stepping-stone LoRAs merged into the model.

Reading order: `train()` is the whole run (setup, loop, output) on one screen; the setup helpers
below it build the model, data, network and optimiser; then the per-step pieces (a batch, the
objective, validation, samples, checkpoints).

Determinism: every random draw of a step (noise, timesteps, flips, caption shuffles) comes from
generators seeded by (seed, step, process), and the data order from (seed, epoch); nothing depends
on how many steps ran before in this process. A run stopped after a checkpoint and resumed
therefore computes exactly what an uninterrupted run computes.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import DDPMScheduler
from torch import nn
from tqdm.auto import tqdm

import sabun
import sabun.train.checkpoint as ckpt
from sabun.data.cache import LatentCache, encode_pixels, load_pixels
from sabun.data.captions import shuffle_caption, tag_frequency
from sabun.data.dataset import BatchPlan, TrainImage, assign_buckets, scan_images, split_validation
from sabun.data.provenance import merged, source_models
from sabun.errors import SabunError
from sabun.io import atomic_output, check_writable
from sabun.lora.file import check_layer, lora_state_dict, save_lora
from sabun.lora.network import LoRANetwork
from sabun.lora.sdxl_names import is_sdxl_unet
from sabun.lora.targets import pipeline_targets
from sabun.lora.weights import LoRA
from sabun.models.families import base_model_version, pipeline_family
from sabun.models.load import load_pipeline
from sabun.train import small_convs, winograd
from sabun.train.compiling import CompiledOrEager
from sabun.train.config import TrainConfig, config_from_toml, to_dict, to_toml
from sabun.train.model import (
    PlainWeights,
    TextEncoders,
    check_clip_skip,
    check_supported,
    freeze,
    long_captions,
    merge_stepping_stones,
    pixel_stride,
    sdxl_time_ids,
    stones_metadata,
)
from sabun.train.noise import compute_snr, diffusion_loss, draw_noise, draw_timesteps, training_target
from sabun.train.optim import build_optimizer, build_schedule, parameter_groups
from sabun.train.sampling import sample_grid

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    """What a run produced."""

    lora_path: Path | None  # the final LoRA; None if the run was interrupted
    config_path: Path | None  # the resolved config next to it
    step: int  # optimiser steps done in total (including before a resume)
    interrupted: bool  # stopped by Ctrl-C / SIGTERM after writing a checkpoint
    checkpoint: Path | None  # the last checkpoint written by this run
    losses: list[float] = field(default_factory=list)  # mean training loss of each step of this run
    step_seconds: list[float] = field(default_factory=list)  # wall time of each step (no sampling/checkpoints)
    validation: dict[int, float] = field(default_factory=dict)  # step -> validation loss
    samples: list[Path] = field(default_factory=list)  # sample grids written


def train(
    config: TrainConfig, resume: str | Path | bool | None = None, overwrite: bool = False, pipe=None
) -> TrainResult:
    """Train one LoRA as `config` says and write it (kohya format) to OUTPUT_DIR/NAME.safetensors.

    Args:
        resume: a checkpoint folder, or True / "latest" for the newest checkpoint of this run.
        overwrite: replace an existing output (and drop an earlier run's checkpoints).
        pipe: an already loaded pipeline to train on instead of loading `config.model.path`; it is
            handed back unchanged (stepping-stones unmerged, LoRA detached).
    Raises SabunError on bad input (before training starts) and on a non-finite loss.
    """
    accelerator = build_accelerator(config)
    # every check (outputs, data, model, network, checkpoint) comes before anything is deleted: a
    # failed `--overwrite` run leaves the earlier run's checkpoints as they were
    resume_from, replaced = prepare_output(config, resume, overwrite, accelerator)
    run = Run(config, accelerator)
    run.check_data()
    try:
        run.load_model(pipe)
        run.check_network()
        run.load_data()
        run.build_network()
        start = run.restore(resume_from) if resume_from else 0
        remove_checkpoints(replaced, accelerator)  # the new run starts now
        return run.loop(start)
    finally:
        run.close()


class Run:
    """One training run's state; the methods are the named setup steps and the loop."""

    def __init__(self, config: TrainConfig, accelerator):
        self.config, self.accelerator = config, accelerator
        self.device = accelerator.device
        self.gemm_convs: list[nn.Conv2d] = []  # the U-Net's layers small_convs changed
        self.winograd_convs: list[nn.Conv2d] = []  # and those winograd changed
        self.main = accelerator.is_main_process
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.started_at = time.time()
        self.network: LoRANetwork | None = None
        self.plain: PlainWeights | None = None
        self.writer = None
        self.last_checkpoint: Path | None = None

    # --- setup: data check (before the model, so bad data fails fast) -------------------------

    def check_data(self) -> None:
        self.found = scan_images(self.config.datasets, self.config.data)
        if self.found.missing_captions:
            warnings.warn(
                f"{self.found.missing_captions} image(s) have no caption file; they use the dataset's default_caption (or the N_name folder's name)",
                stacklevel=2,
            )

    # --- setup: model ---------------------------------------------------------------------------

    def load_model(self, pipe) -> None:
        """Load the model, freeze it, merge the stepping-stones in fp32, move it to the device."""

        cfg = self.config
        self.owns_pipe = pipe is None
        self.pipe = (
            pipe
            if pipe is not None
            else load_pipeline(
                cfg.model.path, allow_pickle=cfg.model.allow_pickle, prediction_type=cfg.model.prediction_type
            )
        )
        check_supported(self.pipe, cfg.model.path)
        self.pipe.set_progress_bar_config(disable=True)
        self.unet, self.tokenizer = self.pipe.unet, self.pipe.tokenizer
        check_clip_skip(self.pipe, cfg.model.clip_skip, cfg.model.path)
        self.text = TextEncoders.of(self.pipe, cfg.model.clip_skip)
        freeze(self.unet, self.pipe.vae, *self.text.encoders)
        self.targets = pipeline_targets(self.pipe, conv=cfg.network.conv_rank is not None)
        # stepping-stones merge into every layer they hold (3x3 convs too), whatever the new LoRA trains
        self.plain, self.stones = merge_stepping_stones(
            pipeline_targets(self.pipe, conv=True), cfg.model.base_weights, cfg.model.allow_pickle
        )
        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        steps = self.noise_scheduler.config.num_train_timesteps
        if cfg.training.min_timestep >= steps or (cfg.training.max_timestep or 0) > steps:
            name = "min_timestep" if cfg.training.min_timestep >= steps else "max_timestep"
            raise SabunError(
                f"training.{name}: {getattr(cfg.training, name)} is past this model's {steps} training timesteps ({cfg.model.path})"
            )
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise SabunError(
                f"{cfg.model.path}: prediction_type {self.prediction_type!r} cannot be trained; supported: epsilon, v_prediction"
            )
        self.weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
            cfg.training.mixed_precision
        ]
        for module in (self.unet, self.pipe.vae, *self.text.encoders):
            module.to(self.device)
            if self.weight_dtype != torch.float32:  # torch's own `to`: diffusers' warns on every dtype cast
                nn.Module.to(module, dtype=self.weight_dtype)
        self.plain.to(self.device, self.weight_dtype)
        if self.device.type == "cpu":  # undone in close()
            small = small_convs.forward if cfg.training.small_conv_gemm else nn.Conv2d.forward
            if cfg.training.winograd_convs:  # small images go on to `small`
                self.winograd_convs = winograd.install(self.unet, fallback=small)
            if cfg.training.small_conv_gemm:
                self.gemm_convs = small_convs.install(self.unet)  # the layers winograd left (few channels)
        if cfg.training.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if self.train_text_encoder:
                for encoder in self.text.encoders:
                    encoder.gradient_checkpointing_enable()
        # CLIP has no dropout, but gradient checkpointing in transformers only runs in train mode
        self.unet.train(cfg.training.gradient_checkpointing)
        for encoder in self.text.encoders:
            encoder.train(cfg.training.gradient_checkpointing and self.train_text_encoder)

    @property
    def train_text_encoder(self) -> bool:
        net, opt = self.config.network, self.config.optimizer
        return net.train_text_encoder and (opt.text_encoder_lr is None or opt.text_encoder_lr > 0)

    def check_network(self) -> None:
        """Refuse a rank the model's layers cannot take, before any memory is spent on it: a layer's
        LoRA rank may be at most its larger side (the LoRA reader refuses more), so one rank for all
        layers may be at most the smallest such side."""
        cfg, net = self.config, self.config.network
        components = self.components()
        layers = [t for t in self.targets.values() if t.component in components]
        for option, rank, conv in (("network.rank", net.rank, False), ("network.conv_rank", net.conv_rank, True)):
            shapes = [
                (t.module.weight.shape[0], math.prod(t.module.weight.shape[1:]), t.name)
                for t in layers
                if t.conv3x3 == conv
            ]
            if rank is None or not shapes:
                continue
            out, fan_in, name = min(shapes, key=lambda s: max(s[0], s[1]))
            if rank > max(out, fan_in):
                raise SabunError(
                    f"{option}: {rank} is larger than the model's layer {name} ({out} x {fan_in}), which no LoRA reader accepts; "
                    f"the largest {option.removeprefix('network.')} for {cfg.model.path} is {max(out, fan_in)}"
                )

    def components(self) -> list[str]:
        """The LoRA's components: `unet` and/or the text encoders' (`te`, or SDXL's `te1`, `te2`)."""
        net = self.config.network
        return (["unet"] if net.train_unet else []) + (["te", "te1", "te2"] if self.train_text_encoder else [])

    # --- setup: data ----------------------------------------------------------------------------

    def load_data(self) -> None:
        """Bucket the checked images, split off validation, plan the batches, cache latents and text."""
        cfg = self.config
        images = assign_buckets(self.found.images, cfg.datasets, cfg.data, pixel_stride(self.pipe))
        self.images, self.validation_images = split_validation(images, cfg.validation.split, cfg.training.seed)
        self.all_images = self.images + self.validation_images
        # every 3D model behind the data (sabun render metadata) and behind the stepping-stones
        self.source_models = merged(
            source_models(im.path for im in self.images), *(s.source_models for s in self.stones)
        )
        self.plan = BatchPlan(self.images, cfg.data.batch_size, self.world, cfg.training.seed)
        micro_steps = cfg.training.epochs * self.plan.batches_per_epoch
        self.total_steps = cfg.training.max_steps or math.ceil(micro_steps / cfg.training.gradient_accumulation)
        truncated = long_captions(self.tokenizer, [im.caption for im in self.all_images])
        if truncated:
            warnings.warn(
                f"{truncated} caption(s) are longer than the text encoder's {self.tokenizer.model_max_length} tokens and are truncated",
                stacklevel=2,
            )

        self.latents: LatentCache | None = None
        if cfg.data.cache_latents != "none":
            flips = [cfg.datasets[im.dataset].flip for im in self.all_images]
            directory = (
                Path(cfg.data.cache_dir or cfg.output_dir / "latent_cache")
                if cfg.data.cache_latents == "disk"
                else None
            )
            self.latents = LatentCache(self.all_images, flips, directory)
            with self.accelerator.main_process_first():  # main writes the disk cache, the others read it
                self.latents.fill(self.pipe.vae, write=self.main)

        shuffled = any(cfg.datasets[im.dataset].shuffle_caption for im in self.all_images)
        self.text_cache: dict[str, torch.Tensor] | None = None
        if cfg.data.cache_text_embeddings and not self.train_text_encoder and not shuffled:
            # after the stepping-stone merge, so the cached embeddings are the merged model's
            captions = sorted({im.caption for im in self.all_images})
            with torch.no_grad():
                self.text_cache = {c: self.text([c]) for c in captions}

        # free what training will not touch again (only when the pipeline is ours to change)
        if self.owns_pipe and self.latents is not None and not cfg.sampling.every_n_steps:
            self.pipe.vae = None
        if self.owns_pipe and self.text_cache is not None and not cfg.sampling.every_n_steps:
            self.pipe.text_encoder = self.text = None
            if getattr(self.pipe, "text_encoder_2", None) is not None:
                self.pipe.text_encoder_2 = None
            # the text encoders' layers are held here too; without these, their memory is freed
            self.targets = {name: t for name, t in self.targets.items() if t.component == "unet"}

    # --- setup: network and optimiser -----------------------------------------------------------

    def build_network(self) -> None:
        """Create the LoRA (seeded), attach it, and wrap the objective, optimiser and schedule."""
        cfg, net = self.config, self.config.network
        components = self.components()
        torch.manual_seed(cfg.training.seed)
        self.network = LoRANetwork.create(self.targets, net.rank, net.alpha, net.conv_rank, net.conv_alpha, components)
        if not len(self.network._modules):
            raise SabunError(f"{cfg.model.path}: has no layers for a LoRA on {', '.join(components)}")
        self.network.to(self.device, torch.float32).attach()  # LoRA weights stay fp32 under mixed precision
        lr = cfg.optimizer.learning_rate
        te_lr = cfg.optimizer.text_encoder_lr if cfg.optimizer.text_encoder_lr is not None else lr
        groups = parameter_groups(self.network, lr, te_lr)
        self.trainable = [p for g in groups for p in g["params"]]
        objective = DiffusionObjective(
            self.network,
            self.unet,
            self.text,
            self.noise_scheduler,
            self.pipe.vae_scale_factor,
            cfg.training.min_snr_gamma,
            cfg.training.compile,
        )
        optimizer = build_optimizer(cfg.optimizer, groups)
        self.schedule = build_schedule(optimizer, cfg.schedule, self.total_steps)
        # the schedule is stepped by hand: accelerate would step it once per process
        self.objective, self.optimizer = self.accelerator.prepare(objective, optimizer)

    def restore(self, path: Path) -> int:
        """Load a checkpoint into the network, optimiser and schedule; return its step."""
        lora, state, saved_toml = ckpt.load_checkpoint(path)
        check_resumable(self.config, saved_toml, path)
        if state.get("world_size", 1) != self.world:
            raise SabunError(
                f"{path}: was trained with {state['world_size']} process(es); resume with the same number (now {self.world})"
            )
        missing = set(dict(self.network.named_children())) ^ set(lora.weights)
        if missing:
            raise SabunError(
                f"{path}: its LoRA layers differ from this config's network ({len(missing)} layers); it belongs to another run"
            )
        for name, module in self.network.named_children():
            module.load_weight(lora.weights[name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.schedule.lr_lambdas[0].total_steps = self.total_steps  # a longer max_steps stretches the rest
        ckpt.set_rng_states(state["rng"])
        self.started_at = state.get("training_started_at", self.started_at)
        self.last_checkpoint = path
        return int(state["step"])

    # --- the loop -------------------------------------------------------------------------------

    def loop(self, start: int) -> TrainResult:
        cfg, accelerator = self.config, self.accelerator
        accum = cfg.training.gradient_accumulation
        result = TrainResult(None, None, start, False, None)
        self.open_logs(start)
        progress = progress_bar(self.total_steps, start, enabled=self.main and cfg.output.progress_bar)
        if cfg.sampling.every_n_steps and cfg.sampling.at_start and start == 0:
            self.write_samples(0, result)
        with StopRequest() as stop:
            for step in range(start, self.total_steps):
                began = time.perf_counter()
                step_loss = 0.0
                for micro in range(accum):
                    batch = self.batch(step * accum + micro)
                    sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(self.objective)
                    with sync:
                        loss = self.objective(**batch)
                        mean_loss = accelerator.reduce(loss.detach(), "mean").item() if self.world > 1 else loss.item()
                        if not math.isfinite(mean_loss):
                            raise self.non_finite(step + 1, mean_loss)
                        accelerator.backward(loss / accum)
                    step_loss += mean_loss / accum
                if cfg.optimizer.max_grad_norm:
                    accelerator.clip_grad_norm_(self.trainable, cfg.optimizer.max_grad_norm)
                self.optimizer.step()
                self.schedule.step()
                self.optimizer.zero_grad(set_to_none=True)
                done = step + 1
                result.step, result.losses = done, result.losses + [step_loss]
                result.step_seconds.append(time.perf_counter() - began)
                self.log_step(done, step_loss, result.step_seconds[-1], progress)

                last = done == self.total_steps
                if cfg.sampling.every_n_steps and (done % cfg.sampling.every_n_steps == 0 or last):
                    self.write_samples(done, result)
                if cfg.validation.split and (
                    (cfg.validation.every_n_steps and done % cfg.validation.every_n_steps == 0) or last
                ):
                    result.validation[done] = self.validate(done)
                stopping = stop.requested(accelerator)
                if stopping or (cfg.checkpoint.every_n_steps and done % cfg.checkpoint.every_n_steps == 0 and not last):
                    result.checkpoint = self.save_checkpoint(done)
                if stopping:
                    result.interrupted = True
                    progress.close()
                    return result
        progress.close()
        result.lora_path, result.config_path = self.save_output(result.step)
        return result

    # --- per step -------------------------------------------------------------------------------

    def batch(self, micro_step: int) -> dict[str, torch.Tensor]:
        """This process's inputs for one micro-batch, drawn from generators seeded by (seed, step, rank)."""
        cfg = self.config
        seed = step_seed(cfg.training.seed, micro_step, self.rank)
        torch.manual_seed(seed)  # anything else drawing from the global generator is seeded too
        generator, rng = torch.Generator().manual_seed(seed), random.Random(seed)
        indices = self.plan.batch(micro_step, self.rank)
        images = [self.images[i] for i in indices]
        flips = [cfg.datasets[im.dataset].flip and rng.random() < 0.5 for im in images]
        captions = [self.caption(im, rng) for im in images]
        if self.latents is not None:
            latents = self.latents.get(indices, flips)  # training images come first in all_images
        else:
            latents = encode_pixels(self.pipe.vae, torch.stack([load_pixels(im, f) for im, f in zip(images, flips)]))
        noise = draw_noise(tuple(latents.shape), generator, cfg.training.noise_offset)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = draw_timesteps(len(images), steps, generator, cfg.training.min_timestep, cfg.training.max_timestep)
        batch = {"latents": latents, "noise": noise, "timesteps": timesteps, **self.text_input(captions)}
        return {k: v.to(self.device) for k, v in batch.items()}

    def caption(self, image: TrainImage, rng: random.Random) -> str:
        dataset = self.config.datasets[image.dataset]
        if not dataset.shuffle_caption:
            return image.caption
        return shuffle_caption(image.caption, dataset.keep_tokens, dataset.caption_separator, rng)

    def text_input(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """The objective's text arguments: `text`, token ids when the text encoders are trained (they
        run inside the objective), else the conditioning, then with SDXL's `pooled` text."""
        if self.train_text_encoder:
            return {"text": self.text.ids(captions)}
        if self.text_cache is not None:
            encoded = [self.text_cache[c] for c in captions]
            text = torch.cat([t for t, _ in encoded])
            pooled = None if encoded[0][1] is None else torch.cat([p for _, p in encoded])
        else:
            with torch.no_grad():
                text, pooled = self.text(captions)
        return {"text": text} | ({} if pooled is None else {"pooled": pooled})

    def non_finite(self, step: int, value: float) -> SabunError:
        where = (
            f"the last good checkpoint is kept at {self.last_checkpoint}; after fixing, continue with --resume {self.last_checkpoint}"
            if self.last_checkpoint
            else "no checkpoint was written yet (set checkpoint.every_n_steps to keep one)"
        )
        return SabunError(
            f"training loss is {value} at step {step}, so training stopped; {where}. Lower optimizer.learning_rate, or check the data and base_weights"
        )

    @torch.no_grad()
    def validate(self, step: int) -> float:
        """Mean loss over the held-out images at fixed timesteps with fixed noise (same every time)."""
        cfg, objective = self.config, self.accelerator.unwrap_model(self.objective)
        k = cfg.validation.timesteps
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.tensor([int((j + 0.5) * steps / k) for j in range(k)])
        losses = []
        for i, image in enumerate(self.validation_images):
            index = len(self.images) + i
            if self.latents is not None:
                latent = self.latents.get([index], [False])
            else:
                latent = encode_pixels(self.pipe.vae, load_pixels(image, False)[None])
            generator = torch.Generator().manual_seed(step_seed(cfg.training.seed, -1 - i, 0))
            noise = torch.randn((k, *latent.shape[1:]), generator=generator)
            text = {name: value.to(self.device) for name, value in self.text_input([image.caption] * k).items()}
            with self.accelerator.autocast():
                loss = objective(
                    latent.expand(k, -1, -1, -1).to(self.device),
                    noise.to(self.device),
                    timesteps.to(self.device),
                    **text,
                )
            losses.append(loss.item())
        value = float(np.mean(losses))
        if self.writer is not None:
            self.writer.add_scalar("loss/validation", value, step)
        return value

    # --- outputs --------------------------------------------------------------------------------

    def write_samples(self, step: int, result: TrainResult) -> None:
        cfg = self.config
        if self.main:
            # unset: data.resolution, to the VAE's multiple of 8 below it (the pipeline takes no other)
            width = cfg.sampling.width or cfg.data.resolution // 8 * 8
            height = cfg.sampling.height or cfg.data.resolution // 8 * 8
            grid = sample_grid(self.pipe, self.network, self.plain, cfg.sampling, width, height, self.text)
            path = cfg.output_dir / "samples" / f"{cfg.output.name}-step{step:06d}.png"
            with atomic_output(path, overwrite=True) as tmp:
                grid.save(tmp, format="PNG")
            result.samples.append(path)
            if self.writer is not None:
                self.writer.add_image("samples", np.asarray(grid), step, dataformats="HWC")
        self.accelerator.wait_for_everyone()

    def metadata(self, step: int) -> dict[str, str]:
        """sd-scripts' `ss_*` training keys plus sabun's provenance (stepping-stones, config)."""
        cfg, plan = self.config, self.plan
        opt = cfg.optimizer
        te_lr = (
            (opt.text_encoder_lr if opt.text_encoder_lr is not None else opt.learning_rate)
            if self.train_text_encoder
            else 0.0
        )
        folders: dict[str, list[TrainImage]] = {}
        for image in self.images:
            folders.setdefault(image.folder, []).append(image)
        separators = {im.folder: cfg.datasets[im.dataset].caption_separator for im in self.images}
        micro = step * cfg.training.gradient_accumulation
        family = pipeline_family(self.pipe)
        meta = {
            "ss_output_name": cfg.output.name,
            "ss_sd_model_name": Path(cfg.model.path).name,
            "ss_training_started_at": str(self.started_at),
            "ss_training_finished_at": str(time.time()),
            "ss_training_comment": cfg.output.comment,
            "ss_learning_rate": str(opt.learning_rate),
            "ss_unet_lr": str(opt.learning_rate if cfg.network.train_unet else 0.0),
            "ss_text_encoder_lr": str(te_lr),
            "ss_optimizer": f"{type(self.optimizer.optimizer).__module__}.{type(self.optimizer.optimizer).__name__}",
            "ss_lr_scheduler": cfg.schedule.type,
            "ss_lr_warmup_steps": str(cfg.schedule.warmup_steps),
            "ss_max_grad_norm": str(opt.max_grad_norm),
            "ss_num_train_images": str(plan.examples_per_epoch),
            "ss_num_reg_images": "0",
            "ss_num_batches_per_epoch": str(plan.batches_per_epoch),
            "ss_num_epochs": str(
                math.ceil(self.total_steps * cfg.training.gradient_accumulation / plan.batches_per_epoch)
            ),
            "ss_epoch": str(micro // plan.batches_per_epoch),
            "ss_steps": str(step),
            "ss_max_train_steps": str(self.total_steps),
            "ss_batch_size_per_device": str(cfg.data.batch_size),
            "ss_total_batch_size": str(cfg.data.batch_size * self.world * cfg.training.gradient_accumulation),
            "ss_gradient_accumulation_steps": str(cfg.training.gradient_accumulation),
            "ss_gradient_checkpointing": str(cfg.training.gradient_checkpointing),
            "ss_mixed_precision": cfg.training.mixed_precision,
            "ss_seed": str(cfg.training.seed),
            "ss_clip_skip": str(cfg.model.clip_skip),
            "ss_noise_offset": str(cfg.training.noise_offset),
            "ss_min_snr_gamma": str(cfg.training.min_snr_gamma),
            "ss_resolution": f"({cfg.data.resolution}, {cfg.data.resolution})",
            "ss_enable_bucket": str(cfg.data.buckets),
            "ss_min_bucket_reso": str(cfg.data.min_bucket or cfg.data.resolution // 2),
            "ss_max_bucket_reso": str(cfg.data.max_bucket or cfg.data.resolution * 2),
            "ss_cache_latents": str(cfg.data.cache_latents != "none"),
            "ss_shuffle_caption": str(any(d.shuffle_caption for d in cfg.datasets)),
            "ss_keep_tokens": str(max(d.keep_tokens for d in cfg.datasets)),
            "ss_flip_aug": str(any(d.flip for d in cfg.datasets)),
            "ss_v_parameterization": str(self.prediction_type == "v_prediction"),
            "ss_base_model_version": base_model_version(family, self.prediction_type),
            "ss_v2": str(family == "sd2"),
            "ss_tag_frequency": json.dumps(
                {f: tag_frequency([im.caption for im in ims], separators[f]) for f, ims in folders.items()}
            ),
            "ss_dataset_dirs": json.dumps(
                {f: {"n_repeats": ims[0].repeats, "img_count": len(ims)} for f, ims in folders.items()}
            ),
            "sabun_base_weights": stones_metadata(self.stones),
            "sabun_source_models": json.dumps(self.source_models),
            "sabun_config": json.dumps(to_dict(cfg)),
            "sabun_version": sabun.__version__,
        }
        return meta

    def checked_lora(self, step: int, dtype: torch.dtype | None = None) -> LoRA:
        """The LoRA as it would be written (cast to `dtype`), refused if a reader would refuse it:
        weights that blew up are never written, as a checkpoint or as the output."""
        lora = self.network.to_lora(self.metadata(step))
        tensors = lora_state_dict(lora, dtype)  # as the file will hold them, alphas included
        for name in lora.weights:
            try:
                check_layer(
                    name,
                    tensors[f"{name}.lora_down.weight"],
                    tensors[f"{name}.lora_up.weight"],
                    tensors[f"{name}.alpha"],
                )
            except ValueError as e:
                where = (f"the last good checkpoint is kept at {self.last_checkpoint}; continue with --resume {self.last_checkpoint}"
                         if self.last_checkpoint else "nothing was written")  # fmt: skip
                raise SabunError(
                    f"the LoRA's weights at step {step} are out of range (layer {name}: {e}), so training stopped; {where}. "
                    "Lower optimizer.learning_rate, or check the data and base_weights"
                ) from None
        return lora

    def save_checkpoint(self, step: int) -> Path:
        cfg = self.config
        path = ckpt.checkpoint_path(cfg.output_dir, cfg.output.name, step)
        if self.main:
            state = {
                "step": step,
                "data_position": list(self.plan.position(step * cfg.training.gradient_accumulation)),
                "world_size": self.world,
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "rng": ckpt.rng_states(),
                "training_started_at": self.started_at,
                "sabun_version": sabun.__version__,
            }
            ckpt.save_checkpoint(path, self.checked_lora(step), state, to_toml(cfg), overwrite=True)
            ckpt.prune_checkpoints(cfg.output_dir, cfg.output.name, cfg.checkpoint.keep_last)
        self.accelerator.wait_for_everyone()
        self.last_checkpoint = path
        return path

    def save_output(self, step: int) -> tuple[Path, Path]:
        cfg = self.config
        if self.main:
            lora = self.checked_lora(step, DTYPES[cfg.output.dtype])
            save_lora(
                lora, cfg.lora_path, overwrite=True, dtype=DTYPES[cfg.output.dtype], family=pipeline_family(self.pipe)
            )
            with atomic_output(cfg.config_path, overwrite=True) as tmp:
                tmp.write_text(to_toml(cfg), encoding="utf-8")
        self.accelerator.wait_for_everyone()
        return cfg.lora_path, cfg.config_path

    def open_logs(self, start: int) -> None:
        if self.main and self.config.output.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run logged after the checkpoint it resumes from
            self.writer = SummaryWriter(
                str(self.config.output_dir / "logs" / self.config.output.name), purge_step=start or None
            )

    def log_step(self, step: int, loss: float, seconds: float, progress) -> None:
        if not self.main:
            return
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{next(iter(lrs.values())):.2e}", refresh=False)
        if self.writer is not None:
            self.writer.add_scalar("loss/train", loss, step)
            self.writer.add_scalar("time/seconds_per_step", seconds, step)
            for name, lr in lrs.items():
                self.writer.add_scalar(f"lr/{name}", lr, step)

    def close(self) -> None:
        """Detach the LoRA and swap the plain weights back, so a caller's pipeline is as it was given."""
        if self.writer is not None:
            self.writer.close()
        if self.network is not None:
            self.network.detach()
        small_convs.uninstall(self.gemm_convs)
        winograd.uninstall(self.winograd_convs)
        self.gemm_convs, self.winograd_convs = [], []
        if self.plain:
            self.plain.swap()
        self.plain = None


class DiffusionObjective(nn.Module):
    """The training loss of one batch.

    The LoRA network is its only registered submodule, so under DDP only the LoRA's parameters
    are broadcast and have their gradients averaged; the frozen U-Net and text encoders are plain
    attributes that DDP never sees.

    SDXL's U-Net also takes the pooled text and the image size (`added_cond_kwargs`); the size is
    the latents' times the VAE's factor.
    """

    def __init__(
        self,
        network: LoRANetwork,
        unet,
        text: TextEncoders | None,
        scheduler,
        vae_scale_factor: int,
        min_snr_gamma: float | None,
        compile_unet: bool = False,
    ):
        super().__init__()
        self.network = network
        # a tuple is not registered as submodules; the U-Net is called through torch.compile when asked
        self.frozen = (CompiledOrEager(unet) if compile_unet else unet, text)
        self.scheduler, self.vae_scale_factor, self.min_snr_gamma = scheduler, vae_scale_factor, min_snr_gamma
        self.sdxl = is_sdxl_unet(unet)
        self.alphas_cumprod = scheduler.alphas_cumprod

    def forward(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        unet, text_encoders = self.frozen
        if text.dtype == torch.long:  # (B, E, 77) token ids: the text encoders (and their LoRA) run in the graph
            text, pooled = text_encoders.encode(text)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)  # (B, C, h, w)
        added = None
        if self.sdxl:
            height, width = (side * self.vae_scale_factor for side in latents.shape[-2:])
            added = {
                "text_embeds": pooled.to(unet.dtype),
                "time_ids": sdxl_time_ids(height, width, len(latents)).to(latents.device, unet.dtype),
            }
        prediction = unet(noisy.to(unet.dtype), timesteps, text.to(unet.dtype), added_cond_kwargs=added).sample
        target = training_target(self.scheduler, latents, noise, timesteps)
        snr = compute_snr(self.alphas_cumprod, timesteps) if self.min_snr_gamma else None
        return diffusion_loss(prediction, target, snr, self.min_snr_gamma, self.scheduler.config.prediction_type)


# --- setup helpers ------------------------------------------------------------------------------


def build_accelerator(config: TrainConfig):
    """An `Accelerator` for this config: CPU unless a GPU is there and allowed; DDP under a launcher.

    `cpu=True` also makes `torchrun` / `accelerate launch --multi_gpu` on a machine without GPUs
    run as several CPU processes (gloo) instead of several independent single-process runs.
    """
    training = config.training
    has_gpu = torch.cuda.is_available() or (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    )
    cpu = training.device == "cpu" or not has_gpu
    if cpu and training.mixed_precision == "fp16":
        raise SabunError("training.mixed_precision: fp16 needs a GPU; use `no` (fp32) or `bf16` on the CPU")
    if cpu and training.mixed_precision == "bf16" and not cpu_has_bf16():
        warnings.warn(
            "training.mixed_precision = bf16: this CPU has no bf16 arithmetic (AVX512_BF16 or AMX), so bf16 runs "
            "emulated, tens of times slower than fp32 (docs/benchmarks.md); use `no` on this machine",
            stacklevel=2,
        )
    # accelerate keeps one precision per process and refuses a second; one process may train
    # several LoRAs (`sabun character`: stepping-stone, then character), so forget the last run's
    # settings. The distributed state (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=cpu, mixed_precision=training.mixed_precision)


def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (oneDNN's fast bf16 kernels need it)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: True)() for name in checks)


def prepare_output(config: TrainConfig, resume, overwrite: bool, accelerator) -> tuple[Path | None, list[Path]]:
    """Check the outputs before any work; return the checkpoint to resume from, if any, and the
    earlier run's checkpoints that `--overwrite` replaces. Nothing is deleted here: the caller
    removes those (`remove_checkpoints`) only once every other check has passed."""
    # a run killed after writing its LoRA but before its config has not finished: resuming redoes both
    unfinished = resume not in (None, False) and config.lora_path.exists() and not config.config_path.exists()
    check_writable(config.lora_path, overwrite or unfinished)
    existing = ckpt.list_checkpoints(config.output_dir, config.output.name)
    if resume is None or resume is False:
        if existing and not overwrite:
            raise SabunError(
                f"{existing[-1][1]}: a checkpoint of an earlier run named {config.output.name!r}; continue it with --resume, "
                "or pass --overwrite to start again (deletes that run's checkpoints)"
            )
        return None, [path for _, path in existing]
    if resume is True or resume == "latest":
        if not existing:
            raise SabunError(
                f"{ckpt.checkpoint_root(config.output_dir)}: no checkpoint of run {config.output.name!r} to resume; run without --resume"
            )
        return existing[-1][1], []
    return Path(resume), []


def remove_checkpoints(paths: list[Path], accelerator) -> None:
    """Delete an earlier run's checkpoints (`--overwrite`), on the main process; all processes wait."""
    if paths and accelerator.is_main_process:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()


RESUME_MAY_CHANGE = ("training.max_steps", "training.epochs", "sampling.", "validation.every_n_steps", "checkpoint.", "output.dtype",
                     "output.comment", "output.tensorboard", "output.progress_bar", "data.cache_latents", "data.cache_dir",
                     "data.cache_text_embeddings", "data.skip_bad_images")  # fmt: skip


def check_resumable(config: TrainConfig, saved_toml: str, path: Path) -> None:
    """Refuse to resume a checkpoint under settings that would change what it trains."""
    if not saved_toml:
        return
    saved = flatten(to_dict(config_from_toml(saved_toml)))
    now = flatten(to_dict(config))
    changed = [
        k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k) and not k.startswith(RESUME_MAY_CHANGE)
    ]
    if changed:
        detail = ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in changed[:5])
        raise SabunError(
            f"{path}: was trained with other settings: {detail}; resume with the checkpoint's config.toml, or start a new run"
        )


def flatten(table: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def step_seed(seed: int, micro_step: int, rank: int) -> int:
    """A 63-bit seed mixed from (seed, step, process): independent streams per step and process."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, micro_step & 0xFFFFFFFF, rank]).generate_state(
        2, dtype=np.uint32
    )
    return int(state[0]) << 31 ^ int(state[1])


def progress_bar(total: int, initial: int, enabled: bool):
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, desc="train")


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to finish its step, write a checkpoint and stop.

    A second Ctrl-C stops at once. With several processes the request is shared (any process
    asking stops all at the same step), so no process waits forever in a collective.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.flag = False
        self.previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        print("\nstopping after this step: writing a checkpoint (press Ctrl-C again to stop at once)", flush=True)

    def requested(self, accelerator) -> bool:
        if accelerator.num_processes == 1:
            return self.flag
        flag = torch.tensor([1.0 if self.flag else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum").item() > 0)
