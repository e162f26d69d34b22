"""Pretraining the toy model, reproducibly, in resumable stages.

    sabun toyworld pretrain --out runs/toy

Stages, each writing its result into OUT and skipped when that result exists:
1. `data`: render random characters (never the signature ribbon, never the target's look) in
   random shots; `three_d_share` of them in the `3d` style, tagged `3d`, as real anime models see a
   few 3D renders. Full booru captions.
2. `vae`: train the AutoencoderKL on the images (L1 + a small KL term), or take a toy model's VAE
   (`vae_from`).
3. `latents`: encode every image once; set the VAE's scaling factor to 1 / std(latents).
4. `diffusion`: train U-Net and text encoder together on the latents (v or epsilon objective,
   SD's noise schedule rescaled to zero terminal SNR or as it is, min-SNR weighting, tag dropout
   and shuffling, 10% empty captions for classifier-free guidance), keeping an EMA of the weights;
   checkpoints every few hundred steps, resumed automatically; snapshots of both weights every
   `snapshot_every` steps in OUT/snapshots.
5. `export`: write the pipeline (the EMA or the raw weights, `export_weights`) as a diffusers
   folder, OUT/model; redone on every run, so the choice of weights may change after training.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors.torch import load_file
from tqdm import tqdm

from sabun.errors import SabunError
from sabun.io import atomic_output
from sabun.toyworld import captions
from sabun.toyworld.character import load_preset, random_character
from sabun.toyworld.commands import metadata
from sabun.toyworld.geometry import POSES
from sabun.toyworld.model import IMAGE_SIZE, VAE_CONFIG, build_toy_pipeline, shipped_model_dir
from sabun.toyworld.render import BACKGROUNDS, VIEWS, ZOOMS, Shot, render
from sabun.train.config import check

STAGES = ("data", "vae", "latents", "diffusion", "export")
DATA_AND_VAE_FIELDS = (
    "images", "three_d_share", "seed", "vae_from", "vae_steps", "vae_batch", "vae_crop", "vae_lr", "kl_weight",
)  # fmt: skip
EXPORT_FIELDS = ("export_weights",)
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines the pretrained toy model."""

    images: int = 16000  # rendered training images
    three_d_share: float = 0.08  # share of 3d-style renders, tagged `3d`
    seed: int = 0  # seed for data, initial weights and training order
    vae_from: str = ""  # take the VAE from this model (`toy` or a diffusers folder) instead of training one
    vae_steps: int = 1500  # VAE optimiser steps
    vae_batch: int = 32  # vAE crops per optimiser step
    vae_crop: int = 32  # the VAE trains on random crops (it is convolutional; 4x cheaper than 64 px)
    vae_lr: float = 2e-3  # vAE learning rate (AdamW, warm-up + cosine)
    kl_weight: float = 1e-6  # small: the latent must keep colour exactly, not be a good prior
    init_from: str = ""  # start the U-Net and text encoder from this model's weights (`toy` or a toy model folder; needs vae_from = the same)
    prediction_type: str = "v_prediction"  # what the U-Net predicts: v_prediction (SD 2.x 768) or epsilon (SD 1.x)
    zero_terminal_snr: bool = True  # rescale SD's betas so the last timestep is pure noise (needs v_prediction)
    cross_attention_16: bool = False  # cross-attention also at the U-Net's 16x16 level
    steps: int = 7000  # U-Net + text encoder optimiser steps
    batch: int = 32  # diffusion batch size
    lr: float = 5e-4  # peak learning rate, cosine decay after warm-up
    warmup: int = 200  # diffusion warm-up steps
    min_snr_gamma: float = 5.0  # min-SNR loss weighting's gamma
    tag_dropout: float = 0.15  # each tag but `1girl`/`solo`/`3d` is dropped with this probability
    caption_dropout: float = 0.1  # empty caption, for classifier-free guidance
    ema_decay: float = 0.999  # decay of the weights' exponential moving average
    export_weights: str = "ema"  # which weights the model folder gets: `ema` (the moving average) or `raw`
    checkpoint_every: int = 250  # diffusion steps between checkpoints
    snapshot_every: int = 1000  # steps between exported snapshots (EMA and raw weights) in OUT/snapshots; 0: none

    def __post_init__(self) -> None:
        """Every field checked before anything is rendered or trained; an error names the
        `sabun toyworld pretrain` option (or, for a field the CLI does not expose, the field)."""

        def number(
            value, name: str, low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False
        ) -> None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
            if high == math.inf:
                bounds = f"{'>' if low_open else '>='} {low:g}"
            else:
                bounds = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            check(ok, name, f"must be a finite number {bounds}, got {value}")

        def count(value, name: str, low: int = 1, high: int | None = None) -> None:
            ok = (
                isinstance(value, int)
                and not isinstance(value, bool)
                and value >= low
                and (high is None or value <= high)
            )
            check(
                ok,
                name,
                f"must be a whole number {f'from {low} to {high}' if high is not None else f'>= {low}'}, got {value!r}",
            )

        count(self.images, "--images")
        number(self.three_d_share, "--three-d-share", 0.0, 0.5)
        check(
            isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed <= 2**32 - 1,
            "--seed",
            f"must be a whole number from 0 to 4294967295 (2**32 - 1), got {self.seed!r}",
        )
        check(isinstance(self.vae_from, str), "vae_from", f"must be a model folder or `toy`, got {self.vae_from!r}")
        check(isinstance(self.init_from, str), "init_from", f"must be a model folder or `toy`, got {self.init_from!r}")
        check(
            not self.init_from or self.vae_from == self.init_from,
            "init_from",
            f"{self.init_from!r}'s U-Net reads its own VAE's latents; set vae_from={self.init_from} too",
        )
        count(self.vae_steps, "--vae-steps")
        count(self.vae_batch, "vae_batch")
        count(self.vae_crop, "vae_crop", 8, IMAGE_SIZE)
        check(
            self.vae_crop % 4 == 0, "vae_crop", f"must be a multiple of 4 (the VAE's downsampling), got {self.vae_crop}"
        )
        number(self.vae_lr, "vae_lr", 0.0, low_open=True)
        number(self.kl_weight, "kl_weight", 0.0)
        check(
            self.prediction_type in PREDICTION_TYPES,
            "prediction_type",
            f"must be one of {', '.join(PREDICTION_TYPES)}, got {self.prediction_type!r}",
        )
        for name in ("zero_terminal_snr", "cross_attention_16"):
            check(isinstance(getattr(self, name), bool), name, f"must be true or false, got {getattr(self, name)!r}")
        check(
            not (self.zero_terminal_snr and self.prediction_type == "epsilon"),
            "zero_terminal_snr",
            "needs prediction_type=v_prediction (at zero SNR the noise is the input and epsilon predicts nothing); with epsilon set zero_terminal_snr=false",
        )
        count(self.steps, "--steps")
        count(self.batch, "--batch")
        check(
            self.images >= self.batch,
            "--images",
            f"{self.images} is fewer than one batch (--batch {self.batch}); render at least {self.batch} images or lower --batch",
        )
        number(self.lr, "lr", 0.0, low_open=True)
        count(self.warmup, "warmup", 0)
        number(self.min_snr_gamma, "min_snr_gamma", 0.0, low_open=True)
        number(self.tag_dropout, "tag_dropout", 0.0, 1.0)
        number(self.caption_dropout, "caption_dropout", 0.0, 1.0)
        number(self.ema_decay, "ema_decay", 0.0, 1.0, high_open=True)
        check(
            self.export_weights in ("ema", "raw"),
            "export_weights",
            f"must be `ema` or `raw`, got {self.export_weights!r}",
        )
        count(self.checkpoint_every, "checkpoint_every")
        count(self.snapshot_every, "snapshot_every", 0)


# --- stage 1: data ------------------------------------------------------------------------------


def render_dataset(config: PretrainConfig) -> tuple[np.ndarray, list[dict]]:
    """(images uint8 (N, 64, 64, 3), metadata per image), deterministic for the seed."""
    rng = np.random.default_rng(config.seed)
    excluded = (load_preset("target"),)
    images = np.empty((config.images, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    metas = []
    for i in tqdm(range(config.images), desc="render", unit="img"):
        spec = random_character(rng, name=f"pretrain-{i:05d}", exclude=excluded)
        shot = Shot(
            view=str(rng.choice(VIEWS)),
            zoom=str(rng.choice(ZOOMS)),
            pose=str(rng.choice(POSES)),
            background=str(rng.choice(BACKGROUNDS)),
        )
        style = "3d" if rng.random() < config.three_d_share else "anime"
        seed = int(rng.integers(2**31))
        images[i] = render(spec, shot, style, size=IMAGE_SIZE, seed=seed)
        metas.append(metadata(spec.name, spec, shot, style, IMAGE_SIZE, seed))
    return images, metas


def training_caption(meta: dict, rng: random.Random, config: PretrainConfig) -> str:
    """A booru caption with tags dropped and shuffled, as anime fine-tunes are trained."""
    if rng.random() < config.caption_dropout:
        return ""
    all_tags = [tag for _, tag in captions.tags(meta)]
    fixed = [t for t in all_tags if t in ("1girl", "solo")]
    rest = [t for t in all_tags if t not in fixed and (t == "3d" or rng.random() >= config.tag_dropout)]
    rng.shuffle(rest)
    return ", ".join(fixed + rest)


# --- stage 2 and 3: VAE and latents -------------------------------------------------------------


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 5% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def train_vae(vae, images: np.ndarray, config: PretrainConfig) -> list[float]:
    generator = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    warmup = max(1, config.vae_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: warmup_cosine(step, config.vae_steps, warmup))
    losses = []
    vae.train()
    bar = tqdm(range(config.vae_steps), desc="vae", unit="step")
    for _ in bar:
        idx = torch.randint(len(images), (config.vae_batch,), generator=generator)
        top, left = (int(v) for v in torch.randint(IMAGE_SIZE - config.vae_crop + 1, (2,), generator=generator))
        x = to_tensor(images[idx.numpy(), top : top + config.vae_crop, left : left + config.vae_crop])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        loss = F.l1_loss(recon, x) + 0.5 * F.mse_loss(recon, x) + config.kl_weight * posterior.kl().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    vae.eval()
    return losses


def vae_of(model: str) -> dict:
    """The VAE weights of a toy model folder (`toy`: the shipped one), checked to be this VAE."""
    folder = shipped_model_dir() if model == "toy" else Path(model)
    vae_dir = folder / "vae"
    if not (vae_dir / "config.json").is_file():
        raise SabunError(
            f"{folder}: no vae/config.json; vae_from takes `toy` or a toy model folder (a run's OUT/model)"
        )
    vae = AutoencoderKL.from_pretrained(vae_dir)
    differ = [k for k, v in VAE_CONFIG.items() if k != "sample_size" and _as_list(vae.config[k]) != _as_list(v)]
    if differ:
        raise SabunError(
            f"{vae_dir}: its VAE has another {', '.join(differ)} than the toy model's; vae_from needs the same VAE"
        )
    return vae.state_dict()


def weights_of(model: str, pipe) -> None:
    """Load a toy model folder's U-Net and text-encoder weights into `pipe` (`toy`: the shipped
    model), refusing a model of another shape."""
    folder = shipped_model_dir() if model == "toy" else Path(model)
    for name in ("unet", "text_encoder"):
        files = sorted((folder / name).glob("*.safetensors"))
        if not files:
            raise SabunError(f"{folder / name}: no .safetensors weights; init_from takes `toy` or a toy model folder")
        state = {k: v for f in files for k, v in load_file(f).items()}
        try:
            getattr(pipe, name).load_state_dict(state)
        except RuntimeError as error:
            first = str(error).splitlines()[0]
            raise SabunError(
                f"{folder / name}: does not fit this run's {name} ({first}); init_from needs a model made with the same architecture settings"
            ) from None


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else value


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Posterior means of every image, unscaled, (N, 4, 16, 16)."""
    out = [
        vae.encode(to_tensor(images[i : i + batch])).latent_dist.mean
        for i in tqdm(range(0, len(images), batch), desc="encode", unit="batch")
    ]
    return torch.cat(out)


# --- stage 4: diffusion -------------------------------------------------------------------------


def min_snr_weights(
    timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """Per-sample loss weights.

    epsilon: min(SNR, gamma) / SNR, Min-SNR-gamma (Hang et al. 2023).
    v_prediction: (min(SNR, gamma) + 1) / (SNR + 1), the plain v loss with steps above SNR gamma
    down-weighted as Min-SNR does. Min-SNR's own v weight, min(SNR, gamma) / (SNR + 1), is 0 at
    zero SNR, and that step is the one where the model learns what the prompt's image looks like
    from the prompt alone (its background and colours); here it keeps full weight."""
    snr = alphas_cumprod[timesteps] / (1 - alphas_cumprod[timesteps])
    if prediction_type == "v_prediction":
        return (torch.clamp(snr, max=gamma) + 1) / (snr + 1)
    return torch.clamp(snr, max=gamma) / snr


class DiffusionTrainer:
    """U-Net + text encoder training state: weights, EMA, optimiser, step, RNGs."""

    def __init__(self, pipe, latents: torch.Tensor, metas: list[dict], config: PretrainConfig):
        self.pipe, self.latents, self.metas, self.config = pipe, latents, metas, config
        self.params = list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters())
        self.ema = [p.detach().clone() for p in self.params]
        self.optimiser = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=1e-2)
        self.alphas_cumprod = pipe.scheduler.alphas_cumprod
        self.step = 0
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self.caption_rng = random.Random(config.seed + 2)
        self.losses: list[float] = []

    def state(self) -> dict:
        return {
            "unet": self.pipe.unet.state_dict(),
            "text_encoder": self.pipe.text_encoder.state_dict(),
            "ema": self.ema,
            "optimiser": self.optimiser.state_dict(),
            "step": self.step,
            "generator": self.generator.get_state(),
            "caption_rng": self.caption_rng.getstate(),
            "losses": self.losses,
        }

    def load(self, state: dict) -> None:
        self.pipe.unet.load_state_dict(state["unet"])
        self.pipe.text_encoder.load_state_dict(state["text_encoder"])
        self.ema = state["ema"]
        self.optimiser.load_state_dict(state["optimiser"])
        self.step = state["step"]
        self.generator.set_state(state["generator"])
        self.caption_rng.setstate(state["caption_rng"])
        self.losses = state["losses"]

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        tokenizer = self.pipe.tokenizer
        ids = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return self.pipe.text_encoder(ids)[0]

    def train_step(self) -> float:
        config = self.config
        idx = torch.randint(len(self.latents), (config.batch,), generator=self.generator)
        latents = self.latents[idx] * self.pipe.vae.config.scaling_factor
        prompts = [training_caption(self.metas[i], self.caption_rng, config) for i in idx.tolist()]
        noise = torch.randn(latents.shape, generator=self.generator)
        timesteps = torch.randint(0, len(self.alphas_cumprod), (config.batch,), generator=self.generator)
        noisy = self.pipe.scheduler.add_noise(latents, noise, timesteps)
        prediction = self.pipe.unet(noisy, timesteps, self.encode_prompts(prompts)).sample
        if config.prediction_type == "v_prediction":
            target = self.pipe.scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        per_sample = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
        weights = min_snr_weights(timesteps, self.alphas_cumprod, config.min_snr_gamma, config.prediction_type)
        loss = (per_sample * weights).mean()
        for group in self.optimiser.param_groups:
            group["lr"] = config.lr * warmup_cosine(self.step, config.steps, config.warmup)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimiser.step()
        with torch.no_grad():
            decay = min(config.ema_decay, (1 + self.step) / (10 + self.step))  # warm EMA start
            for e, p in zip(self.ema, self.params):
                e.lerp_(p.detach(), 1 - decay)
        self.step += 1
        self.losses.append(loss.item())
        return loss.item()

    def copy_ema_to_model(self) -> None:
        with torch.no_grad():
            for e, p in zip(self.ema, self.params):
                p.copy_(e)

    def export(self, folder: Path, ema: bool = True) -> None:
        """Write the pipeline with the EMA (or the raw) weights as a diffusers folder; training
        state is left as it was."""
        raw = [p.detach().clone() for p in self.params]
        if ema:
            self.copy_ema_to_model()
        with atomic_output(folder, overwrite=True, directory=True) as tmp:
            self.pipe.save_pretrained(tmp, safe_serialization=True)
        with torch.no_grad():
            for r, p in zip(raw, self.params):
                p.copy_(r)


# --- driver -------------------------------------------------------------------------------------


def save_torch(obj, path: Path) -> None:
    with atomic_output(path, overwrite=True) as tmp:
        torch.save(obj, tmp)


def pretrain(out: Path, config: PretrainConfig = PretrainConfig(), stages: tuple[str, ...] = STAGES) -> Path:
    """Run the pretraining stages into `out`; returns the exported model folder `out/model`.

    The options and `out` are checked before anything is written (PretrainConfig checks its own
    fields); a run folder made with other data or VAE settings is refused, not mixed."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise SabunError(f"stages {', '.join(unknown) or '(none)'}: choose from {', '.join(STAGES)}")
    if out.exists() and not out.is_dir():
        raise SabunError(f"{out}: is a file, and the pretraining run is a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "pretrain_config.json"
    if config_path.exists():
        saved = json.loads(config_path.read_text())
        # Finished stages must have been made with the same settings; diffusion settings may
        # change until the diffusion stage has its first checkpoint.
        # What is exported may always change (the export is redone on every run).
        fixed = DATA_AND_VAE_FIELDS
        if (out / "diffusion_checkpoint.pt").exists():
            fixed = tuple(k for k in asdict(config) if k not in EXPORT_FIELDS)
        changed = [k for k in fixed if saved.get(k) != asdict(config)[k]]
        if changed:
            raise SabunError(
                f"{out}: holds a pretraining run made with other {', '.join(changed)}; use a new --out or the same settings"
            )
    with atomic_output(config_path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(asdict(config), indent=2))
    torch.manual_seed(config.seed)
    pipe = build_toy_pipeline(config.seed, config.cross_attention_16, config.prediction_type, config.zero_terminal_snr)
    log = open(out / "pretrain_log.jsonl", "a")

    def record(**fields) -> None:
        log.write(json.dumps({"time": time.time(), **fields}) + "\n")
        log.flush()

    data_path = out / "data.npz"
    if "data" in stages and not data_path.exists():
        start = time.time()
        images, metas = render_dataset(config)
        with atomic_output(data_path, overwrite=True) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, images=images, metas=np.array(json.dumps(metas)))
        record(stage="data", seconds=time.time() - start, images=len(images))
    data = np.load(data_path)
    images, metas = data["images"], json.loads(str(data["metas"]))

    vae_path = out / "vae.pt"
    if "vae" in stages and not vae_path.exists():
        start = time.time()
        if config.vae_from:
            save_torch(vae_of(config.vae_from), vae_path)
            record(stage="vae", seconds=time.time() - start, source=config.vae_from)
        else:
            losses = train_vae(pipe.vae, images, config)
            save_torch(pipe.vae.state_dict(), vae_path)
            record(stage="vae", seconds=time.time() - start, final_loss=float(np.mean(losses[-100:])))
    pipe.vae.load_state_dict(torch.load(vae_path, weights_only=True))
    pipe.vae.eval()

    latents_path = out / "latents.pt"
    if "latents" in stages and not latents_path.exists():
        start = time.time()
        save_torch(encode_latents(pipe.vae, images), latents_path)
        record(stage="latents", seconds=time.time() - start)
    latents = torch.load(latents_path, weights_only=True)
    pipe.vae.register_to_config(scaling_factor=float(1.0 / latents.std()))

    checkpoint = out / "diffusion_checkpoint.pt"
    if config.init_from and not checkpoint.exists():  # a resumed run has them in its checkpoint
        weights_of(config.init_from, pipe)
    trainer = DiffusionTrainer(pipe, latents, metas, config)  # the EMA starts from the weights as loaded
    if checkpoint.exists():
        trainer.load(torch.load(checkpoint, weights_only=False))  # our own file, written above
    if "diffusion" in stages and trainer.step < config.steps:
        start = time.time()
        pipe.unet.train()
        pipe.text_encoder.train()
        bar = tqdm(total=config.steps, initial=trainer.step, desc="diffusion", unit="step")
        while trainer.step < config.steps:
            trainer.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(trainer.losses[-100:]):.4f}")
            if config.snapshot_every and trainer.step % config.snapshot_every == 0 and trainer.step < config.steps:
                for ema, suffix in ((True, ""), (False, "-raw")):
                    trainer.export(out / "snapshots" / f"step-{trainer.step:06d}{suffix}", ema=ema)
                record(stage="snapshot", step=trainer.step, path=str(out / "snapshots"))
            if trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps:
                save_torch(trainer.state(), checkpoint)
                record(
                    stage="diffusion",
                    step=trainer.step,
                    loss=float(np.mean(trainer.losses[-config.checkpoint_every :])),
                    seconds=time.time() - start,
                )
        bar.close()

    model_dir = out / "model"
    if "export" in stages and trainer.step >= config.steps:
        pipe.unet.eval()
        pipe.text_encoder.eval()
        trainer.export(model_dir, ema=config.export_weights == "ema")
        record(stage="export", path=str(model_dir), weights=config.export_weights)
    log.close()
    return model_dir
