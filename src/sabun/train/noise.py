"""The DDPM training objective as small pure functions: noise, targets, SNR weighting."""

from __future__ import annotations

import torch


def draw_noise(latents_shape: tuple[int, ...], generator: torch.Generator, noise_offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise shaped like the latents, plus the optional per-channel offset.

    The offset (Guttenberg 2023, "Diffusion with Offset Noise") adds a constant per image and
    channel, which lets the model learn to shift an image's mean brightness.
    """
    noise = torch.randn(latents_shape, generator=generator)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((*latents_shape[:2], 1, 1), generator=generator)
    return noise


def draw_timesteps(
    batch: int, num_train_timesteps: int, generator: torch.Generator, low: int = 0, high: int | None = None
) -> torch.Tensor:
    """Uniform integer timesteps in [low, high), by default [0, num_train_timesteps)."""
    return torch.randint(low, num_train_timesteps if high is None else high, (batch,), generator=generator)


def compute_snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep."""
    alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alpha_bar / (1.0 - alpha_bar)


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-gamma (Hang et al. 2023, arXiv:2303.09556).

    For epsilon prediction the weight is min(SNR, gamma) / SNR; for v-prediction the target's own
    scale adds one to the denominator: min(SNR, gamma) / (SNR + 1).
    """
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1.0) if prediction_type == "v_prediction" else clipped / snr


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the U-Net should predict, per the scheduler's `prediction_type`."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction_type {kind!r} is not supported; supported: epsilon, v_prediction")


def diffusion_loss(
    prediction: torch.Tensor, target: torch.Tensor, snr: torch.Tensor | None, gamma: float | None, prediction_type: str
) -> torch.Tensor:
    """Mean squared error per sample (averaged over C, H, W), min-SNR weighted if gamma is set; mean over the batch."""
    per_sample = (prediction.float() - target.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
    if gamma is not None:
        per_sample = per_sample * min_snr_weights(snr, gamma, prediction_type)
    return per_sample.mean()
