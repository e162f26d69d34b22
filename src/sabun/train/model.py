"""The model side of training: loading, the stepping-stone merge, the plain weights, text encoding.

The stepping-stone LoRAs (`model.base_weights`) are merged into the model in fp32 before the new
LoRA is created, so the new LoRA learns only what the merged model still gets wrong. The original
weights of every layer the merge changed are kept aside, so the *plain* model can be swapped back
in exactly (no un-merge rounding) to show what the new LoRA does where it will be used.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sabun.data.provenance import inherited
from sabun.errors import SabunError
from sabun.lora.file import file_sha256, load_lora
from sabun.lora.ops import Weighted, merge_into_model
from sabun.lora.targets import LoRATarget


def check_supported(pipe, source: str) -> None:
    """The trainer handles SD 1.x / 2.x (one CLIP text encoder) and SDXL base (two) pipelines."""
    if getattr(pipe, "unet", None) is None or getattr(pipe, "text_encoder", None) is None:
        raise SabunError(
            f"{source}: has no U-Net or text encoder; give a Stable Diffusion 1.x / 2.x or SDXL base model"
        )


def max_clip_skip(pipe) -> int:
    """The largest clip_skip the pipeline's text encoder(s) take: SD 1.x / 2.x count from the last
    layer (clip_skip = the layer count uses the first layer's output); SDXL from the penultimate."""
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    encoders = [pipe.text_encoder, pipe.text_encoder_2] if sdxl else [pipe.text_encoder]
    layers = min(encoder.config.num_hidden_layers for encoder in encoders)
    return layers - 1 if sdxl else layers


def check_clip_skip(pipe, clip_skip: int, source: str) -> None:
    """Refuse a `model.clip_skip` past the text encoder's layers (it would index no layer)."""
    largest = max_clip_skip(pipe)
    if clip_skip > largest:
        raise SabunError(
            f"model.clip_skip: {clip_skip} is more layers than the text encoder of {source} has; the largest clip_skip for it is {largest} (usual: 1 or 2)"
        )


def pixel_stride(pipe) -> int:
    """Image sides must be multiples of this: the VAE's factor times the U-Net's total downsampling."""
    return pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)


@dataclass
class SteppingStone:
    """A merged base-weights LoRA, as recorded in the output's metadata."""

    path: str
    sha256: str
    multiplier: float
    layers: int
    source_models: list = field(default_factory=list)  # the 3D models its data was rendered from (its metadata)


class PlainWeights:
    """The original weights of the layers the stepping-stone merge changed.

    `swapped()` exchanges the tensors behind those parameters (no copy, no rounding), so the plain
    model is exactly the loaded one and the merged model comes back bit for bit afterwards.
    """

    def __init__(self, targets: dict[str, LoRATarget], names: set[str]):
        self.layers = {name: targets[name].module for name in sorted(names)}
        self.stored = {name: layer.weight.data.clone() for name, layer in self.layers.items()}

    def __bool__(self) -> bool:
        return bool(self.layers)

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        self.stored = {name: w.to(device, dtype) for name, w in self.stored.items()}

    def swap(self) -> None:
        for name, layer in self.layers.items():
            layer.weight.data, self.stored[name] = self.stored[name], layer.weight.data

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The plain model inside the block, the merged one outside."""
        self.swap()
        try:
            yield
        finally:
            self.swap()


def merge_stepping_stones(
    targets: dict[str, LoRATarget], base_weights, allow_pickle: bool
) -> tuple[PlainWeights, list[SteppingStone]]:
    """Merge `base_weights` (list of `BaseWeight`) into the model in fp32; keep the plain weights.

    Raises a SabunError naming the file if a LoRA cannot be read or does not fit the model.
    """
    loaded = []
    for weight in base_weights:
        path = Path(weight.path)
        lora = load_lora(path, allow_pickle=allow_pickle)
        loaded.append((weight, lora, file_sha256(path)))
    names = {name for _, lora, _ in loaded for name in lora.weights}
    plain = PlainWeights(targets, {n for n in names if n in targets})
    merge_into_model(
        targets, [Weighted(lora, weight.multiplier, f"model.base_weights: {weight.path}") for weight, lora, _ in loaded]
    )
    stones = [
        SteppingStone(str(w.path), sha, w.multiplier, len(lora.weights), inherited(lora.metadata))
        for w, lora, sha in loaded
    ]
    return plain, stones


def stones_metadata(stones: list[SteppingStone]) -> str:
    return json.dumps([{"path": s.path, "sha256": s.sha256, "multiplier": s.multiplier} for s in stones])


def freeze(*modules: nn.Module) -> None:
    for module in modules:
        module.requires_grad_(False)


# --- text ---------------------------------------------------------------------------------------


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """(B, 77) token ids, padded and truncated to the tokenizer's length as SD does."""
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def encode_ids(text_encoder, ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
    """(B, 77) ids -> (B, 77, D) embeddings; clip_skip n takes the n-th layer from the end.

    With clip_skip > 1 the earlier layer's output goes through the final layer norm, as
    AUTOMATIC1111 and sd-scripts do, so LoRAs trained here behave the same there.
    """
    ids = ids.to(text_encoder.device)
    if clip_skip == 1:
        return text_encoder(ids)[0]
    hidden_states = text_encoder(
        ids, output_hidden_states=True
    ).hidden_states  # the embeddings, then each layer's output
    if clip_skip >= len(hidden_states):
        raise SabunError(
            f"model.clip_skip: {clip_skip} is more layers than the text encoder has; the largest clip_skip for it is {len(hidden_states) - 1}"
        )
    hidden = hidden_states[-clip_skip]
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hidden)


class TextEncoders:
    """Captions -> the U-Net's text conditioning, computed as each family's pipeline computes it.

    SD 1.x / 2.x: one CLIP; its last hidden state, or with clip_skip n the n-th from the end
    through the final layer norm: (B, 77, D), and no pooled text.
    SDXL: two CLIPs; each one's penultimate hidden state (clip_skip n: the (n+1)-th from the end),
    without the final layer norm, concatenated: (B, 77, 768 + 1280); and the second one's projected
    pooled embedding (B, 1280), which the U-Net takes with the image size (`sdxl_time_ids`). This
    is what diffusers' SDXL pipeline and sd-scripts' SDXL trainer compute.
    """

    def __init__(self, tokenizers: list, encoders: list[nn.Module], clip_skip: int = 1):
        self.tokenizers, self.encoders, self.clip_skip = tokenizers, encoders, clip_skip

    @classmethod
    def of(cls, pipe, clip_skip: int = 1) -> TextEncoders:
        if getattr(pipe, "text_encoder_2", None) is not None:
            return cls([pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2], clip_skip)
        return cls([pipe.tokenizer], [pipe.text_encoder], clip_skip)

    @property
    def pooled(self) -> bool:
        """Whether the U-Net also takes the pooled text (SDXL)."""
        return len(self.encoders) == 2

    def ids(self, captions: list[str]) -> torch.Tensor:
        """(B, E, 77) token ids, one row per text encoder (each with its own tokenizer's padding)."""
        return torch.stack([tokenize(tokenizer, captions) for tokenizer in self.tokenizers], dim=1)

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, E, 77) ids -> (conditioning (B, 77, D), pooled (B, P) or None)."""
        if not self.pooled:
            return encode_ids(self.encoders[0], ids[:, 0], self.clip_skip), None
        hidden = []
        for encoder, row in zip(self.encoders, ids.unbind(dim=1)):
            out = encoder(row.to(encoder.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-1 - self.clip_skip])
        return torch.cat(hidden, dim=-1), out.text_embeds  # the second encoder's projection

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.encode(self.ids(captions))


def sdxl_time_ids(height: int, width: int, batch: int) -> torch.Tensor:
    """(B, 6) SDXL size conditioning: original size, crop top-left, target size, as (h, w) pairs.

    Training says "an uncropped image of the bucket's size", which is what the pipeline passes
    by default at inference (original = target = the output size, no crop), so the LoRA learns
    under the conditioning it will be used with.
    """
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).expand(batch, -1)


def long_captions(tokenizer, captions: list[str]) -> int:
    """How many captions exceed the text encoder's length (they are truncated, as in every SD UI)."""
    limit = tokenizer.model_max_length - 2  # start and end tokens
    return sum(len(tokenizer(c, add_special_tokens=False).input_ids) > limit for c in set(captions))
