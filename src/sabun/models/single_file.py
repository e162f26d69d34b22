"""Single-file checkpoints in the original (LDM / SGM) layout: read into a diffusers pipeline, write back.

Loading reads only the file: the family comes from its keys (`families.detect_family`), each
component's config from its tensors' shapes (channels, levels, depths; attention heads follow the
family's rule), the tokenizers from the BPE merges shipped in the package, and the weights through
the key map in `layout`. Nothing is fetched, so it works with no network and no Hugging Face cache.
The components are built on the meta device and take the file's tensors, upcast to fp32, one by
one, so loading needs about the fp32 model's size in memory.

Writing goes the other way, tensor by tensor, straight into a safetensors file: peak memory stays
at the model plus one tensor. A pipeline loaded from a single file is written back in that file's
layout and dtypes, with the tensors the pipeline does not use (SD 2.x's last text layer, the
noise-schedule buffers) copied unchanged; stale EMA weights (`model_ema.*`) are dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors import SafetensorError, safe_open
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

import sabun
from sabun.errors import SabunError
from sabun.io import atomic_output, load_tensors, require_file
from sabun.models import architectures as arch
from sabun.models.clip_tokenizer import OPENCLIP_PAD, clip_tokenizer
from sabun.models.families import (
    SD1_TEXT,
    SD2_TEXT,
    SDXL_TEXT_1,
    SDXL_TEXT_2,
    TITLES,
    UNET,
    VAE,
    detect_family,
    pipeline_family,
    resolve_prediction_type,
    stated_prediction_type,
)
from sabun.models.layout import PREFIXES, Entry, checkpoint_layout, from_original, original_shape, to_original

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip
DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


@dataclass
class CheckpointSource:
    """What a pipeline loaded from a single file keeps, to be written back in the same layout."""

    path: Path
    family: str  # sd1 | sd2 | sdxl
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)  # each tensor's dtype in the file
    extras: dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # tensors the pipeline does not use, written back unchanged


# --- reading ------------------------------------------------------------------------------------


class CheckpointReader:
    """Shapes, dtypes, metadata and (lazily) tensors of a single-file checkpoint."""

    def __init__(self, path: Path, allow_pickle: bool = False):
        self.path = require_file(path, "model")
        self._file = None
        self._tensors: dict[str, torch.Tensor] = {}
        self.metadata: dict[str, str] = {}
        if self.path.suffix.lower() in PICKLE_SUFFIXES:
            self._tensors, _ = load_tensors(self.path, allow_pickle=allow_pickle, what="model")
            self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}
            self.dtypes = {k: v.dtype for k, v in self._tensors.items()}
            return
        try:
            self._file = safe_open(str(self.path), framework="pt", device="cpu")
            self.metadata = dict(self._file.metadata() or {})
            slices = {k: self._file.get_slice(k) for k in self._file.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise SabunError(
                f"{self.path}: is not a readable safetensors file ({e}); it may be truncated or corrupt: download or write it again"
            ) from None
        self.shapes = {k: tuple(s.get_shape()) for k, s in slices.items()}
        self.dtypes = {k: SAFETENSORS_DTYPES.get(s.get_dtype(), torch.float32) for k, s in slices.items()}

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self._file = None
        self._tensors = {}

    def resolve(self, key: str) -> str | None:
        """`key`, or the older spelling an SD 1.x file may use (CLIP without `text_model.`)."""
        if key in self.shapes:
            return key
        old = key.replace(".transformer.text_model.", ".transformer.", 1)
        return old if old in self.shapes else None

    def get(self, key: str) -> torch.Tensor:
        """One tensor, checked: a weight with NaN or infinite values (a broken merge or download) is
        refused here, so it never reaches a merge, a training run or a picture."""
        try:
            tensor = self._tensors[key] if self._file is None else self._file.get_tensor(key)
        except Exception as e:  # noqa: BLE001 - safetensors reports a short file's data as its own error
            raise SabunError(
                f"{self.path}: tensor {key} cannot be read ({e}); the file is truncated or corrupt: download or write it again"
            ) from None
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SabunError(
                f"{self.path}: tensor {key} holds NaN or infinite values; the checkpoint is corrupt: download or merge it again"
            )
        return tensor


def matching(shapes: dict[str, tuple[int, ...]], pattern: str) -> list[re.Match]:
    regex = re.compile(pattern)
    return [m for k in shapes if (m := regex.fullmatch(k))]


def count(shapes: dict[str, tuple[int, ...]], pattern: str) -> int:
    """How many distinct values the first group of `pattern` takes over the keys (layers, blocks)."""
    return len({m.group(1) for m in matching(shapes, pattern)})


# --- configs from shapes ------------------------------------------------------------------------


def unet_config(shapes: dict[str, tuple[int, ...]], family: str, pooled_dim: int = 0) -> dict:
    """A `UNet2DConditionModel` config read off an original-layout U-Net's tensor shapes.

    Channels, levels, resnets per level, where attention is and its depth come from the weights;
    attention heads cannot, and follow the family: 8 heads in SD 1.x, 64-channel heads after.
    """
    p = re.escape(UNET)
    shape = lambda key: shapes[UNET + key]  # noqa: E731
    levels: list[list[int]] = [[]]  # input_blocks indices of each level's resnets
    for i in range(1, count(shapes, rf"{p}input_blocks\.(\d+)\..*")):
        if UNET + f"input_blocks.{i}.0.op.weight" in shapes:
            levels.append([])
        else:
            levels[-1].append(i)
    layers = len(levels[0])
    if any(len(level) != layers for level in levels):
        raise ValueError(f"levels hold different numbers of resnets: {[len(level) for level in levels]}")
    channels = [shape(f"input_blocks.{level[0]}.0.out_layers.3.weight")[0] for level in levels]
    depth = [count(shapes, rf"{p}input_blocks\.{level[0]}\.1\.transformer_blocks\.(\d+)\..*") for level in levels]
    mid_depth = count(shapes, rf"{p}middle_block\.1\.transformer_blocks\.(\d+)\..*")
    if count(shapes, rf"{p}output_blocks\.(\d+)\..*") != len(levels) * (layers + 1):
        raise ValueError("output_blocks do not mirror input_blocks")
    proj_in = next(v for k, v in shapes.items() if k.startswith(UNET) and k.endswith(".proj_in.weight"))
    to_k = next(v for k, v in shapes.items() if k.startswith(UNET) and k.endswith(".attn2.to_k.weight"))
    config = dict(
        sample_size={"sd1": 64, "sd2": 64, "sdxl": 128}[family],
        in_channels=shape("input_blocks.0.0.weight")[1],
        out_channels=shape("out.2.weight")[0],
        block_out_channels=tuple(channels),
        layers_per_block=layers,
        down_block_types=tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depth),
        up_block_types=tuple("CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depth)),
        cross_attention_dim=to_k[1],
        attention_head_dim=8 if family == "sd1" else tuple(max(c // 64, 1) for c in channels),
        use_linear_projection=len(proj_in) == 2,
        # SD 2.1 needs attention scores in fp32 when run in fp16; in fp32 this changes nothing
        upcast_attention=family == "sd2",
    )
    if family == "sdxl":
        # diffusers takes the mid block's depth from the last level, as SDXL has it
        if depth[-1] != mid_depth:
            raise ValueError(f"the middle block's depth {mid_depth} differs from the last level's {depth[-1]}")
        config["transformer_layers_per_block"] = tuple(max(d, 1) for d in depth)
        config["addition_embed_type"] = "text_time"
        config["projection_class_embeddings_input_dim"] = shape("label_emb.0.0.weight")[1]
        # the added embedding is [pooled text, 6 sinusoidal embeddings of sizes and crops]
        config["addition_time_embed_dim"] = (config["projection_class_embeddings_input_dim"] - pooled_dim) // 6
    elif set(depth) - {0} != {1} or mid_depth != 1:
        raise ValueError(f"transformer depths {depth} / {mid_depth}, expected 1")
    return config


def vae_config(shapes: dict[str, tuple[int, ...]], family: str) -> dict:
    """An `AutoencoderKL` config read off an original-layout VAE's tensor shapes."""
    p = re.escape(VAE)
    levels = count(shapes, rf"{p}encoder\.down\.(\d+)\..*")
    config = dict(
        in_channels=shapes[VAE + "encoder.conv_in.weight"][1],
        out_channels=shapes[VAE + "decoder.conv_out.weight"][0],
        block_out_channels=tuple(shapes[VAE + f"encoder.down.{i}.block.0.conv2.weight"][0] for i in range(levels)),
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=count(shapes, rf"{p}encoder\.down\.0\.block\.(\d+)\..*"),
        latent_channels=shapes[VAE + "post_quant_conv.weight"][0],
        sample_size={"sd1": 512, "sd2": 768, "sdxl": 1024}[family],
    )
    if family == "sdxl":
        config |= dict(scaling_factor=arch.SDXL_VAE["scaling_factor"], force_upcast=True)
    return config


def clip_config(shapes: dict[str, tuple[int, ...]], prefix: str) -> dict:
    """A `CLIPTextConfig` for OpenAI CLIP (SD 1.x, SDXL's first encoder) read off its shapes."""
    reader = lambda key: shapes.get(prefix + "text_model." + key) or shapes[prefix + key]  # noqa: E731
    p = re.escape(prefix)
    vocab, hidden = reader("embeddings.token_embedding.weight")
    return dict(
        arch.SD15_TEXT,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=reader("encoder.layers.0.mlp.fc1.weight")[0],
        num_hidden_layers=count(shapes, rf"{p}(?:text_model\.)?encoder\.layers\.(\d+)\..*"),
        num_attention_heads=max(hidden // 64, 1),
        max_position_embeddings=reader("embeddings.position_embedding.weight")[0],
    )


def openclip_config(shapes: dict[str, tuple[int, ...]], prefix: str, family: str) -> dict:
    """A `CLIPTextConfig` for an OpenCLIP text tower (SD 2.x, SDXL's second) read off its shapes.

    SD 2.x conditions on the penultimate layer, so its last layer is left out of the model (and kept
    aside to be written back); SDXL's second encoder runs every layer, for the pooled embedding.
    """
    vocab, hidden = shapes[prefix + "token_embedding.weight"]
    layers = count(shapes, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\..*")
    # only SDXL's encoder projects (its pooled output); SD 2.x's projection is never run
    projection = shapes[prefix + "text_projection"][1] if family == "sdxl" else arch.SD2_TEXT["projection_dim"]
    return dict(
        arch.SD2_TEXT,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0],
        num_hidden_layers=layers - 1 if family == "sd2" else layers,
        num_attention_heads=max(hidden // 64, 1),
        max_position_embeddings=shapes[prefix + "positional_embedding"][0],
        projection_dim=projection,
    )


def component_configs(shapes: dict[str, tuple[int, ...]], family: str) -> dict[str, dict]:
    """The config of every component of a `family` checkpoint, from its shapes."""
    if family == "sd1":
        text = {"text_encoder": clip_config(shapes, SD1_TEXT)}
    elif family == "sd2":
        text = {"text_encoder": openclip_config(shapes, SD2_TEXT, family)}
    else:
        text = {
            "text_encoder": clip_config(shapes, SDXL_TEXT_1),
            "text_encoder_2": openclip_config(shapes, SDXL_TEXT_2, family),
        }
    pooled = text["text_encoder_2"]["projection_dim"] if family == "sdxl" else 0
    return {"unet": unet_config(shapes, family, pooled), "vae": vae_config(shapes, family)} | text


# --- building the pipeline ----------------------------------------------------------------------


def build_components(configs: dict[str, dict], family: str, empty: bool = False) -> dict[str, torch.nn.Module]:
    """U-Net, VAE and text encoder(s) from configs; `empty` allocates no weights (meta device)."""
    # parameters only: CLIP's position_ids buffer is not in the file and must be real
    with (
        init_empty_weights() if empty else contextlib.nullcontext(),
        skip_text_init() if empty else contextlib.nullcontext(),
    ):
        components = {"unet": UNet2DConditionModel(**configs["unet"]), "vae": AutoencoderKL(**configs["vae"])}
        components["text_encoder"] = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        if family == "sdxl":
            components["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
    return components


def skip_text_init():
    """transformers' switch that skips random initialisation (it runs even on the meta device, slowly)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # moved in another transformers version: initialising is only slower
        return contextlib.nullcontext()
    return no_init_weights()


def scheduler_for(family: str, prediction_type: str = "epsilon", zero_terminal_snr: bool = False):
    """The family's noise schedule (see `architectures`), predicting `prediction_type`; with
    `zero_terminal_snr` its betas rescaled so the last timestep is pure noise, and sampling starts
    there (trailing timestep spacing)."""
    schedule = dict(prediction_type=prediction_type, rescale_betas_zero_snr=zero_terminal_snr)
    if zero_terminal_snr:
        schedule["timestep_spacing"] = "trailing"
    if family == "sdxl":
        return EulerDiscreteScheduler(**(arch.SDXL_SCHEDULER | schedule))
    return DDIMScheduler(**(arch.SD_SCHEDULER | schedule))


def assemble_pipeline(family: str, components: dict[str, torch.nn.Module], scheduler):
    """A diffusers pipeline of `family` around `components`, with the real CLIP tokenizers."""
    for module in components.values():
        module.eval()
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            **components,
            tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(OPENCLIP_PAD),
            scheduler=scheduler,
            add_watermarker=False,
        )
    else:
        tokenizer = clip_tokenizer(OPENCLIP_PAD if family == "sd2" else "<|endoftext|>")
        pipe = StableDiffusionPipeline(
            **components,
            tokenizer=tokenizer,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_single_file(path: str | os.PathLike, allow_pickle: bool = False, prediction_type: str | None = None):
    """Load an SD 1.x / 2.x / SDXL base checkpoint in the original layout as a diffusers pipeline (CPU, fp32).

    Args:
        path: a `.safetensors` file (or a `.ckpt` pickle, only with `allow_pickle`; read weights-only).
        allow_pickle: allow pickle files; only for files you trust.
        prediction_type: `epsilon` or `v_prediction`; None decides as `families` describes.
    """
    path = Path(path)
    with CheckpointReader(path, allow_pickle) as reader:
        family = detect_family(reader.shapes, str(path))
        title = TITLES[family]
        try:
            configs = component_configs(reader.shapes, family)
        except (KeyError, ValueError, StopIteration) as e:
            raise SabunError(
                f"{path}: looks like {title} but its structure is not one sabun knows ({type(e).__name__}: {e}); supported: standard SD 1.x, SD 2.x and SDXL base models"
            ) from None
        components = build_components(configs, family, empty=True)
        entries = checkpoint_layout(components, family)
        used = fill_components(components, entries, reader, title)
        stated = stated_prediction_type(reader.shapes, reader.metadata)
        dtypes = {entry.original: reader.dtypes[key] for entry, key in used.items()}
        read = set(used.values())
        extras = {k: reader.get(k) for k in reader.shapes if k not in read and not k.startswith("model_ema.")}
    prediction, reason = resolve_prediction_type(family, prediction_type, stated, components["unet"])
    if family == "sd2" and prediction == "v_prediction":
        components["unet"].register_to_config(sample_size=96)  # 768-px models
    pipe = assemble_pipeline(family, components, scheduler_for(family, prediction, zero_terminal_snr="ztsnr" in extras))
    pipe.sabun_checkpoint = CheckpointSource(path, family, dtypes, extras)
    log.info("%s: %s checkpoint (original layout), prediction type %s (%s)", path, title, prediction, reason)
    return pipe


def fill_components(
    components: dict[str, torch.nn.Module], entries: list[Entry], reader: CheckpointReader, title: str
) -> dict[Entry, str]:
    """Give every parameter its tensor from the file, in fp32; returns each entry's key in the file."""
    shapes = {f"{c}/{k}": tuple(v.shape) for c, m in components.items() for k, v in m.state_dict().items()}
    state: dict[str, dict[str, torch.Tensor]] = {c: {} for c in components}
    used = {}
    for entry in entries:
        key = reader.resolve(entry.original)
        if key is None:
            raise SabunError(
                f"{reader.path}: has no tensor {entry.original}, which a {title} checkpoint of this shape has; the file is incomplete or not a standard {title} model"
            )
        # always a fresh fp32 copy: the file's own buffer may be shared or unaligned
        tensor = reader.get(key).to(torch.float32, copy=True)
        try:
            parts = from_original(entry, tensor, [shapes[p] for p in entry.parts])
        except ValueError as e:
            raise SabunError(f"{reader.path}: tensor {key} {e}; the file is not a standard {title} model") from None
        for name, value in zip(entry.parts, parts):
            component, param = name.split("/", 1)
            state[component][param] = value.contiguous()
        used[entry] = key
    for component, module in components.items():
        module.load_state_dict(state[component], strict=True, assign=True)
    return used


# --- writing ------------------------------------------------------------------------------------


def save_single_file(pipe, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `pipe` as one `.safetensors` file in its family's original layout, atomically.

    Tensors take the dtypes of the file the pipeline was loaded from (fp16 stays fp16; the model
    itself is fp32, so merges are done in fp32 and cast here), or the model's dtype if it was not
    loaded from a single file. A v-prediction model gets the `v_pred` marker key, a zero-terminal-SNR
    one the `ztsnr` key, and every file
    states its prediction type in `modelspec.prediction_type`, so it loads back without guessing.
    """
    out = Path(out)
    family = pipeline_family(pipe)
    source: CheckpointSource | None = getattr(pipe, "sabun_checkpoint", None)
    components = {name: getattr(pipe, name) for name in PREFIXES[family]}
    params = {f"{c}/{k}": v for c, m in components.items() for k, v in m.state_dict().items()}
    items: list[tuple[str, tuple[int, ...], torch.dtype, Callable[[], torch.Tensor]]] = []
    for entry in checkpoint_layout(components, family):
        parts = [params[p] for p in entry.parts]
        dtype = source.dtypes.get(entry.original, parts[0].dtype) if source else parts[0].dtype
        items.append(
            (
                entry.original,
                original_shape(entry, [tuple(t.shape) for t in parts]),
                dtype,
                lambda e=entry, ts=parts, d=dtype: to_original(e, ts).to(d),
            )
        )
    written = {key for key, *_ in items}
    extras = dict(source.extras) if source else {}
    if family == "sd2":
        extras = sd2_unused_text_layer(pipe.text_encoder) | extras
    prediction = pipe.scheduler.config.prediction_type
    markers = {
        "v_pred": prediction == "v_prediction",
        "ztsnr": bool(pipe.scheduler.config.get("rescale_betas_zero_snr")),
    }
    for key, present in markers.items():  # the keys A1111, Forge and ComfyUI read a model's schedule from
        if present:
            extras.setdefault(key, torch.zeros(0))
        else:
            extras.pop(key, None)
    for key, tensor in sorted(extras.items()):
        if key not in written:
            items.append((key, tuple(tensor.shape), tensor.dtype, lambda t=tensor: t))
    metadata = {
        "modelspec.prediction_type": "v" if prediction == "v_prediction" else "epsilon",
        "sabun_family": family,
        "sabun_version": sabun.__version__,
    }
    with atomic_output(out, overwrite=overwrite) as tmp:
        write_safetensors(tmp, items, metadata)
    log.info("%s: wrote %s checkpoint (original layout), %d tensors", out, TITLES[family], len(items))
    return out


def sd2_unused_text_layer(text_encoder) -> dict[str, torch.Tensor]:
    """SD 2.x's 24th OpenCLIP text layer, for a model that lacks it, as an exact identity.

    SD 2.x conditions on the 23rd layer and diffusers drops the 24th, but every original-layout
    reader expects 24. With zero output projections the layer adds nothing to its input, so a tool
    that runs it gets the same embedding as one that stops before it.
    """
    n, hidden = text_encoder.config.num_hidden_layers, text_encoder.config.hidden_size
    inner = text_encoder.config.intermediate_size
    dtype = next(text_encoder.parameters()).dtype
    shapes = {
        "ln_1.weight": (hidden,), "ln_1.bias": (hidden,), "ln_2.weight": (hidden,), "ln_2.bias": (hidden,),
        "attn.in_proj_weight": (3 * hidden, hidden), "attn.in_proj_bias": (3 * hidden,),
        "attn.out_proj.weight": (hidden, hidden), "attn.out_proj.bias": (hidden,),
        "mlp.c_fc.weight": (inner, hidden), "mlp.c_fc.bias": (inner,), "mlp.c_proj.weight": (hidden, inner), "mlp.c_proj.bias": (hidden,),
    }  # fmt: skip
    return {f"{SD2_TEXT}transformer.resblocks.{n}.{k}": torch.zeros(shape, dtype=dtype) for k, shape in shapes.items()}


def write_safetensors(
    path: Path,
    items: list[tuple[str, tuple[int, ...], torch.dtype, Callable[[], torch.Tensor]]],
    metadata: dict[str, str],
) -> None:
    """Write a safetensors file one tensor at a time (safetensors' own writer needs them all in memory).

    The format: an 8-byte little-endian header length, a JSON header giving each tensor's dtype,
    shape and byte range, padded with spaces to 8 bytes, then the tensors' bytes back to back.
    """
    header: dict[str, dict] = {}
    offset = 0
    for key, shape, dtype, _ in items:
        size = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps({"__metadata__": metadata} | header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for key, shape, dtype, produce in items:
            tensor = produce().detach().to("cpu").contiguous()
            if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                raise RuntimeError(f"{key}: produced {tuple(tensor.shape)} {tensor.dtype}, announced {shape} {dtype}")
            if tensor.numel():
                f.write(tensor.reshape(-1).view(torch.uint8).numpy().data)


def random_pipeline(family: str, reduced: bool = True, seed: int = 0):
    """A diffusers pipeline of `family` (`sd1`, `sd2`, `sdxl`) with random weights drawn under `seed`.

    `reduced=False` builds the real sizes (SD 1.5: 1.07 G parameters, 4.3 GB in fp32).
    """

    torch.manual_seed(seed)
    configs = (arch.REDUCED if reduced else arch.ARCHITECTURES)[family]
    return assemble_pipeline(family, build_components(configs, family), scheduler_for(family))
