"""Fuzzing the LoRA reader: any file must load as a valid LoRA or fail with a SabunError.

    python benchmarks/fuzz_lora.py [--cases 10000] [--seed 0] [--kind KIND ...] [--timeout 5] [--keep DIR]
    python benchmarks/fuzz_lora.py --case values:17 [--keep DIR]      # one case: what it is, what happened
    python benchmarks/fuzz_lora.py --reader old_file.py ...             # fuzz another load_lora (e.g. from git)

The contract checked: `sabun.lora.file.load_lora(path)` on any file returns a valid `LoRA` or raises
`sabun.errors.SabunError`; no other exception, no hang, no crash. Valid (`check_lora`): at least one
layer; per layer, floating-point (not complex) down and up, down 2-D (r, in) or 4-D (r, in, kh, kw),
up 2-D (out, r) or 4-D (out, r, 1, 1) with as many dims as down, every dim >= 1 (so rank >= 1), one
rank in both; alpha a finite number > 0; every value finite, and so the fp32 weight change
up @ down * alpha / r a merge computes; metadata a table of strings.

Cases start from small kohya files written by `sabun.lora.file.save_lora` (Linear and 3x3 / 1x1 conv
layers; fp32, fp16, bf16; SD 1.x and SDXL names; with alpha, and with the alphas taken out) and are
mutated, seeded by (kind, seed), so `--case KIND:SEED` remakes any one of them. Kinds (`KINDS`):
bytes (`header_len`, `header_json`, `data_flip`, `truncate`, `extend`), structured edits of the
safetensors header and tensors (`dtype`, `shape`, `offsets`, `keys`, `family`, `alpha`, `values`,
`rank`, `metadata`), `combo` (several at once), and `clean`, the control: rewrites that change
nothing a reader may care about (tensor order, header padding, no metadata, no alpha), which must
load, and load as exactly what was written. Only the safetensors format is written, never a pickle.

Each file is loaded in a worker process (one for the run, replaced when it dies or hangs) under a
4 GiB address-space limit, with a per-load wall-clock timeout enforced from outside by killing the
worker: a loop in native code, which a signal.alarm in-process would not interrupt, still counts as a
hang, and a segfault counts as a crash instead of ending the run. Prints, per kind: valid, clean error
(SabunError), invalid (returned a LoRA that breaks the contract), other exception, hang, crash, and
the first few of each failure with its KIND:SEED; exits 1 if any case failed. tests/test_lora_fuzz.py
runs the first cases of every kind of `--seed 0`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import select
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import torch

# ---------------------------------------------------------------------------------------------
# The safetensors format: 8-byte little-endian header length, a JSON header
# {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the
# data; offsets are relative to the data's start and must cover it exactly.

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "C64": torch.complex64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
MAX_LOAD_SECONDS = 5.0


def split(data: bytes) -> tuple[dict, bytes]:
    """(header as parsed JSON, data after the header); ValueError if the header does not parse."""
    if len(data) < 8:
        raise ValueError("shorter than the header length")
    n = struct.unpack("<Q", data[:8])[0]
    if n > len(data) - 8:
        raise ValueError("header length past the end")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_pairs(pairs: list[tuple[str, object]], body: bytes, pad: int = 0) -> bytes:
    """A file from header (key, value) pairs, in order and duplicates kept, padded to 8 bytes + `pad` spaces."""
    text = "{" + ",".join(json.dumps(k) + ":" + json.dumps(v, separators=(",", ":")) for k, v in pairs) + "}"
    raw = text.encode()
    raw += b" " * ((-len(raw)) % 8 + pad)
    return struct.pack("<Q", len(raw)) + raw + body


def join(header: dict, body: bytes, pad: int = 0) -> bytes:
    return join_pairs(list(header.items()), body, pad)


def encode(t: torch.Tensor) -> tuple[str, list[int], bytes]:
    """(dtype string, shape, raw little-endian bytes) of a tensor."""
    return DTYPE_NAMES[t.dtype], list(t.shape), t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def decode(dtype: str, shape: list[int], raw: bytes) -> torch.Tensor:
    if not raw:
        return torch.empty(shape, dtype=DTYPES[dtype])
    return torch.frombuffer(bytearray(raw), dtype=DTYPES[dtype]).reshape(shape)


def read(data: bytes) -> tuple[dict | None, dict[str, list]]:
    """(metadata, {name: [dtype, shape, raw]}) of a well-formed file, in header order; ValueError if not one."""
    header, body = split(data)
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    entries = {}
    for name, info in header.items():
        try:
            begin, end = info["data_offsets"]
            entries[name] = [info["dtype"], list(info["shape"]), body[begin:end]]
            decode(*entries[name])
        except Exception as e:
            raise ValueError(f"entry {name!r} is not well-formed: {e}") from None
    return metadata, entries


def pack(entries: dict[str, list], metadata: dict | None = None, pad: int = 0, order: list[str] | None = None) -> bytes:
    """A well-formed file: tensors laid out one after another (in `order`, default the entries' order)."""
    pairs, body, offset = [], [], 0
    if metadata is not None:
        pairs.append(("__metadata__", metadata))
    for name in order or list(entries):
        dtype, shape, raw = entries[name]
        pairs.append((name, {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}))
        body.append(raw)
        offset += len(raw)
    return join_pairs(pairs, b"".join(body), pad)


def layer_of(key: str) -> tuple[str, str] | None:
    for suffix in SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return None


def layers(entries: dict) -> list[str]:
    return sorted({s[0] for k in entries if (s := layer_of(k)) is not None})


# ---------------------------------------------------------------------------------------------
# The base files: small, valid, written by save_lora.


@dataclass
class Base:
    name: str
    data: bytes


def _base_loras():
    from sabun.lora.weights import LoRA, LoRAWeight

    g = torch.Generator().manual_seed(0)

    def linear(out, fan_in, rank, alpha):
        return LoRAWeight(
            0.05 * torch.randn(rank, fan_in, generator=g), 0.05 * torch.randn(out, rank, generator=g), alpha
        )

    def conv(out, fan_in, rank, k, alpha):
        return LoRAWeight(
            0.05 * torch.randn(rank, fan_in, k, k, generator=g), 0.05 * torch.randn(out, rank, 1, 1, generator=g), alpha
        )

    sd1 = LoRA(
        {
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": linear(12, 16, 4, 2.0),
            "lora_unet_down_blocks_0_resnets_0_conv1": conv(6, 8, 4, 3, 1.0),
            "lora_unet_down_blocks_0_attentions_0_proj_in": conv(8, 8, 2, 1, 2.0),
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj": linear(16, 16, 4, 4.0),
        }
    )
    sdxl = LoRA(
        {
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k": linear(16, 16, 8, 8.0),
            "lora_te1_text_model_encoder_layers_0_mlp_fc1": linear(16, 8, 4, 1.0),
            "lora_te2_text_model_encoder_layers_0_self_attn_v_proj": linear(8, 8, 2, 0.5),
            "lora_unet_input_blocks_1_0_in_layers_2": conv(4, 4, 2, 3, 1.0),
        }
    )
    return [
        ("sd1_fp32", sd1, torch.float32, "sd1"),
        ("sd1_fp16", sd1, torch.float16, "sd1"),
        ("sdxl_bf16", sdxl, torch.bfloat16, "sdxl"),
    ]


_BASES: list[Base] = []


def bases() -> list[Base]:
    """The base files (cached): sd1 fp32 / fp16, sdxl bf16, and the sd1 fp32 file with its alphas removed."""
    if not _BASES:
        from sabun.lora.file import save_lora

        with tempfile.TemporaryDirectory() as tmp:
            for name, lora, dtype, family in _base_loras():
                path = save_lora(lora, Path(tmp) / f"{name}.safetensors", dtype=dtype, family=family)
                metadata, entries = read(path.read_bytes())
                # safetensors writes the metadata in hash-map order, which changes from run to run; sorted,
                # the bytes (and so every case made from them) are the same on every run
                _BASES.append(Base(name, pack(entries, dict(sorted(metadata.items())))))
        metadata, entries = read(_BASES[0].data)
        _BASES.append(
            Base("sd1_fp32_no_alpha", pack({k: v for k, v in entries.items() if not k.endswith(".alpha")}, metadata))
        )
    return _BASES


# ---------------------------------------------------------------------------------------------
# Mutations: fn(rng, data) -> (data, note). A structured one that cannot parse its input (in a
# combo, after another mutation) returns it unchanged.


class Skip(Exception):
    pass


def _parsed(data: bytes):
    try:
        return read(data)
    except ValueError:
        raise Skip from None


def _pick(rng: random.Random, entries: dict, suffixes=SUFFIXES) -> str:
    names = [k for k in entries if any(k.endswith(s) for s in suffixes)] or list(entries)
    if not names:
        raise Skip
    return rng.choice(names)


def _tensor(entries: dict, name: str) -> torch.Tensor:
    return decode(*entries[name])


def _put(entries: dict, name: str, t: torch.Tensor) -> None:
    entries[name] = list(encode(t))


def _convert(t: torch.Tensor, dtype: str) -> torch.Tensor:
    x = t.to(torch.float64) if not t.is_complex() else t.real.to(torch.float64)
    target = DTYPES[dtype]
    if target == torch.bool:
        return x > 0
    if target.is_floating_point or target.is_complex:
        return x.to(target)
    return (x * 100).round().clamp(-100, 100).to(torch.int64).to(target)  # int weights of a few units, not all zero


def _edit_header(data: bytes, fn) -> bytes:
    header, body = split(data)
    fn(header)
    return join(header, body)


def m_header_len(rng, data):
    n = struct.unpack("<Q", data[:8])[0]
    mode = rng.choice(["bitflip", "bitflip", "zero", "off_by", "file_size", "huge", "max", "over_limit", "byteswap"])
    if mode == "bitflip":
        b = bytearray(data)
        bit = rng.randrange(64)
        b[bit // 8] ^= 1 << (bit % 8)
        return bytes(b), f"flip bit {bit} of the header length"
    value = {
        "zero": 0, "off_by": n + rng.choice([-9, -8, -2, -1, 1, 2, 8, 9]), "file_size": len(data),
        "huge": rng.randrange(2**32, 2**63), "max": 2**64 - 1, "over_limit": 100_000_001,
        "byteswap": int.from_bytes(data[:8], "big"),
    }[mode]  # fmt: skip
    return struct.pack("<Q", max(0, value)) + data[8:], f"header length {n} -> {value} ({mode})"


def m_header_json(rng, data):
    n = min(struct.unpack("<Q", data[:8])[0], len(data) - 8)
    if n <= 0:
        raise Skip
    b = bytearray(data)
    digits = [i for i in range(8, 8 + n) if chr(b[i]).isdigit()]
    notes = []
    for _ in range(rng.choice([1, 1, 1, 2, 3, 5])):
        op = rng.choice(["digit", "digit", "flip", "char"])
        if op == "digit" and digits:
            i = rng.choice(digits)
            b[i] = ord(rng.choice("0123456789"))
        elif op == "char":
            i = rng.randrange(8, 8 + n)
            b[i] = rng.choice(b'{}[]":,0123456789-+.eE nulltrue\\\x00\xff\n')
        else:
            i = rng.randrange(8, 8 + n)
            b[i] ^= 1 << rng.randrange(8)
        notes.append(f"{op}@{i}")
    return bytes(b), "header bytes: " + " ".join(notes)


def m_data_flip(rng, data):
    n = struct.unpack("<Q", data[:8])[0]
    start = 8 + n
    if start >= len(data):
        raise Skip
    b = bytearray(data)
    notes = []
    for _ in range(rng.choice([1, 1, 2, 4, 8, 32])):
        i = rng.randrange(start, len(b))
        op = rng.choice(["flip", "flip", "ff", "7f", "zero", "high"])
        if op == "flip":
            b[i] ^= 1 << rng.randrange(8)
        elif op == "high":
            b[i] ^= 0x40  # an exponent bit of whatever float this byte is the top of
        else:
            b[i] = {"ff": 0xFF, "7f": 0x7F, "zero": 0}[op]
        notes.append(f"{op}@{i}")
    return bytes(b), "data bytes: " + " ".join(notes)


def m_truncate(rng, data):
    n = struct.unpack("<Q", data[:8])[0]
    where = rng.choice(["length", "header", "data", "data", "last"])
    cut = {
        "length": rng.randrange(0, 8),
        "header": rng.randrange(8, min(8 + n, len(data))) if n else 8,
        "data": rng.randrange(min(8 + n, len(data) - 1), len(data)),
        "last": len(data) - 1,
    }[where]
    return data[:cut], f"truncated to {cut} of {len(data)} bytes ({where})"


def m_extend(rng, data):
    mode = rng.choice(["random", "random", "zeros", "spaces", "copy", "prepend", "json"])
    k = rng.choice([1, 3, 8, 64, 4096])
    extra = {
        "random": bytes(rng.randrange(256) for _ in range(k)), "zeros": bytes(k), "spaces": b" " * k,
        "copy": data, "prepend": bytes(rng.randrange(256) for _ in range(8)), "json": b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
    }[mode]  # fmt: skip
    if mode == "prepend":
        return extra + data, "8 random bytes before the file"
    return data + extra, f"{len(extra)} bytes appended ({mode})"


def m_dtype(rng, data):
    metadata, entries = _parsed(data)
    name = _pick(rng, entries)
    dtype, shape, raw = entries[name]
    mode = rng.choice(["convert", "convert", "convert", "relabel", "bogus"])
    if mode == "convert":
        target = rng.choice(list(DTYPES))
        _put(entries, name, _convert(decode(dtype, shape, raw), target))
        return pack(entries, metadata), f"{name}: values converted {dtype} -> {target}"
    if mode == "relabel":
        target = rng.choice(list(DTYPES))
        old, new = DTYPES[dtype].itemsize, DTYPES[target].itemsize
        if shape and rng.random() < 0.7 and (shape[-1] * old) % new == 0:
            shape = shape[:-1] + [shape[-1] * old // new]  # same bytes, read as another type
        entries[name] = [target, shape, raw]
        return pack(entries, metadata), f"{name}: bytes of {dtype} labelled {target}, shape {shape}"
    bogus = rng.choice(
        ["F128", "f32", "", "FLOAT32", "I4", "F4", "F6_E2M3", "E8M0", "Q4_0", "F32 ", 7, None, ["F32"], {"F32": 1}]
    )

    def edit(header):
        header[name]["dtype"] = bogus

    return _edit_header(pack(entries, metadata), edit), f"{name}: dtype {bogus!r}"


def m_shape(rng, data):
    metadata, entries = _parsed(data)
    name = _pick(rng, entries)
    dtype, shape, raw = entries[name]
    mode = rng.choice(
        [
            "unsqueeze",
            "flatten",
            "to3d",
            "to5d",
            "squeeze",
            "reverse",
            "scalar",
            "zero",
            "zero_huge",
            "huge",
            "negative",
            "float",
            "string",
            "null",
            "drop_dim",
        ]
    )
    new = list(shape)
    if mode == "unsqueeze":
        new.insert(rng.randrange(len(new) + 1), 1)
    elif mode == "flatten":
        new = [math.prod(shape)]
    elif mode == "to3d":
        if len(shape) >= 2:
            last = math.prod(shape[1:])
            f = next((d for d in (3, 2) if last % d == 0), 1)
            new = [shape[0], last // f, f]
        else:
            new = [1, 1, math.prod(shape)]
    elif mode == "to5d":
        new = (new + [1] * 5)[:5] if len(new) < 5 else new + [1]
    elif mode == "squeeze":
        new = (
            [d for d in shape if d != 1] if 1 in shape else shape[1:]
        )  # without a 1 to drop, the sizes no longer add up
    elif mode == "reverse":
        new = shape[::-1]
    elif mode == "scalar":
        if math.prod(shape) == 1:
            new = [] if shape else [1] * rng.randrange(1, 4)
        else:
            new, raw = [], raw[: DTYPES[dtype].itemsize]  # a 0-d tensor: its first value
    elif mode == "zero":
        new = list(shape) or [0]
        new[rng.randrange(len(new))] = 0
        raw = b""
    elif mode == "zero_huge":
        new, raw = [0, 2 ** rng.randrange(20, 63)], b""
    elif mode == "drop_dim":
        new = shape[:-1]
        raw = raw[: math.prod(new) * DTYPES[dtype].itemsize]
    if mode in ("huge", "negative", "float", "string", "null"):
        bad = {"huge": 2 ** rng.randrange(20, 64), "negative": -1, "float": 2.5, "string": "4", "null": None}[mode]
        new = list(shape) or [1]
        new[rng.randrange(len(new))] = bad

        def edit(header):
            header[name]["shape"] = new

        return _edit_header(pack(entries, metadata), edit), f"{name}: shape {shape} -> {new} ({mode})"
    entries[name] = [dtype, new, raw]
    return pack(entries, metadata), f"{name}: shape {shape} -> {new} ({mode})"


def m_offsets(rng, data):
    metadata, entries = _parsed(data)
    packed = pack(entries, metadata)
    header, body = split(packed)
    names = [k for k in header if k != "__metadata__"]
    if not names:
        raise Skip
    name = rng.choice(names)
    begin, end = header[name]["data_offsets"]
    mode = rng.choice(
        [
            "overlap",
            "past_end",
            "reversed",
            "shift",
            "negative",
            "swap_same_size",
            "three",
            "float",
            "huge",
            "empty",
            "gap",
            "point_elsewhere",
        ]
    )
    new = [begin, end]
    if mode == "overlap" and len(names) > 1:
        other = header[rng.choice([n for n in names if n != name])]["data_offsets"]
        new = [other[0], other[0] + (end - begin)]
    elif mode == "past_end":
        new = [begin, len(body) + rng.choice([1, 4, 1 << 20])]
    elif mode == "reversed":
        new = [end, begin]
    elif mode == "shift":
        k = rng.choice([-1, 1, 2])
        new = [begin + k, end + k]
    elif mode == "negative":
        new = [-begin - 1, end]
    elif mode == "swap_same_size":
        same = [
            n for n in names if n != name and header[n]["data_offsets"][1] - header[n]["data_offsets"][0] == end - begin
        ]
        if same:  # a well-formed file whose tensors have traded places
            other = rng.choice(same)
            header[name]["data_offsets"], header[other]["data_offsets"] = header[other]["data_offsets"], [begin, end]
            return join(header, body), f"{name} <-> {other}: offsets swapped"
        new = [begin, end]
    elif mode == "three":
        new = [begin, end, end]
    elif mode == "float":
        new = [begin + 0.5, end]
    elif mode == "huge":
        new = [begin, 2**64 - 1]
    elif mode == "empty":
        new = []
    elif mode == "gap":
        new = [begin + 1, end]
    elif mode == "point_elsewhere":
        new = [0, end - begin]
    header[name]["data_offsets"] = new
    return join(header, body), f"{name}: data_offsets [{begin}, {end}] -> {new} ({mode})"


ODD_NAMES = [
    "model.diffusion_model.input_blocks.0.0.weight", "foo", "", ".alpha", ".lora_down.weight", "lora_unet_ghost.alpha",
    "lora_unet_x.lora_A.weight", "x" * 5000 + ".lora_down.weight", "lora_unet_\u00e9\n\t.lora_up.weight", "__metadata__x",
]  # fmt: skip


def m_keys(rng, data):
    metadata, entries = _parsed(data)
    mode = rng.choice(
        ["remove", "remove", "remove_layer", "remove_all", "duplicate", "add", "add", "rename_suffix", "drop_alphas"]
    )
    if mode == "remove":
        name = _pick(rng, entries)
        del entries[name]
        return pack(entries, metadata), f"removed {name}"
    if mode == "remove_layer":
        layer = rng.choice(layers(entries) or [""])
        entries = {k: v for k, v in entries.items() if not k.startswith(layer + ".")}
        return pack(entries, metadata), f"removed layer {layer}"
    if mode == "remove_all":
        return pack({}, metadata), "removed every tensor"
    if mode == "drop_alphas":
        return pack({k: v for k, v in entries.items() if not k.endswith(".alpha")}, metadata), "removed every alpha"
    if mode == "duplicate":
        packed = pack(entries, metadata)
        header, body = split(packed)
        pairs = list(header.items())
        i = rng.randrange(len(pairs))
        key = pairs[i][0]
        if rng.random() < 0.5:
            dup = (key, pairs[i][1])  # the same entry twice
        else:
            other = rng.choice(pairs)[1]
            dup = (key, other)  # the name again, pointing at another tensor's data
        pairs.insert(rng.randrange(len(pairs) + 1), dup)
        return join_pairs(pairs, body), f"key {key} twice in the header"
    if mode == "add":
        new = rng.choice(ODD_NAMES)
        source = _pick(rng, entries)
        entries[new] = list(entries[source])
        return pack(entries, metadata), f"added {new[:60]!r} (a copy of {source})"
    name = _pick(rng, entries, SUFFIXES[:2])
    base, _ = layer_of(name) or (name, "")
    new_suffix = rng.choice(
        [
            ".lora_down.weights",
            ".Lora_down.weight",
            ".lora_A.weight",
            ".lora_up.weight",
            ".lora_down.weight",
            ".alpha",
            ".lora_mid.weight",
        ]
    )
    entries[base + new_suffix] = entries.pop(name)
    return pack(entries, metadata), f"{name} renamed to suffix {new_suffix}"


PREFIXES = ["lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_unet", "LORA_UNET_", "lycoris_", "", "lora_te3_"]


def m_family(rng, data):
    metadata, entries = _parsed(data)
    names = layers(entries)
    if not names:
        raise Skip
    if rng.random() < 0.3 and len(names) > 1:  # one layer's down put under another layer's name
        a, b = rng.sample(names, 2)
        part = rng.choice(SUFFIXES)
        if a + part in entries:
            entries[b + part] = entries.pop(a + part)
        return pack(entries, metadata), f"{a}{part} moved to {b}"
    renamed = {}
    for layer in names:
        if rng.random() < 0.5:
            old = next((p for p in PREFIXES if p and layer.startswith(p) and p.endswith("_")), "")
            renamed[layer] = rng.choice(PREFIXES) + layer[len(old) :]
    out = {}
    for key, value in entries.items():
        s = layer_of(key)
        out[(renamed.get(s[0], s[0]) + s[1]) if s else key] = value
    return pack(out, metadata), "renamed " + ", ".join(f"{a} -> {b}" for a, b in renamed.items())


ALPHAS = [
    float("nan"),
    float("inf"),
    float("-inf"),
    -1.0,
    0.0,
    -0.0,
    1e-45,
    1e-3,
    1e38,
    3.4e38,
    1e300,
    4.0,
    65504.0,
    1e5,
]


def m_alpha(rng, data):
    metadata, entries = _parsed(data)
    names = layers(entries)
    if not names:
        raise Skip
    layer = rng.choice(names)
    mode = rng.choice(["value", "value", "value", "shape", "dtype", "remove"])
    if mode == "remove":
        entries.pop(layer + ".alpha", None)
        return pack(entries, metadata), f"{layer}: alpha removed"
    value = rng.choice(ALPHAS)
    shape: list[int] = []
    dtype = "F32"
    if mode == "shape":
        shape = rng.choice([[4], [1], [1, 1], [0], [2, 2], [1, 1, 1, 1]])
    if mode == "dtype":
        dtype = rng.choice(list(DTYPES))
        value = rng.choice([value, 1.0, 4.0])
    target = DTYPES[dtype]
    if target.is_floating_point or target.is_complex:
        t = torch.full(shape, value, dtype=torch.float64).to(target)  # the value itself, overflow and all
    elif target == torch.bool:
        t = torch.full(shape, value > 0, dtype=torch.bool)
    else:
        t = torch.full(shape, int(max(-100, min(100, value))) if math.isfinite(value) else 0, dtype=torch.int64).to(
            target
        )
    _put(entries, layer + ".alpha", t)
    return pack(entries, metadata), f"{layer}: alpha {value} {dtype} shape {shape}"


def m_values(rng, data):
    metadata, entries = _parsed(data)
    name = _pick(rng, entries, SUFFIXES[:2])
    t = _tensor(entries, name)
    if not t.is_floating_point() or t.numel() == 0:
        raise Skip
    x = t.to(torch.float64).clone()
    mode = rng.choice(["nan_one", "inf_one", "neginf_one", "nan_all", "scale", "scale", "denormal", "max", "zeros"])
    if mode in ("nan_one", "inf_one", "neginf_one"):
        x.view(-1)[rng.randrange(x.numel())] = {"nan_one": math.nan, "inf_one": math.inf, "neginf_one": -math.inf}[mode]
    elif mode == "nan_all":
        x[:] = math.nan
    elif mode == "scale":
        factor = rng.choice([1e30, 1e20, 1e10, 1e4, 1e-30, -1.0, 0.5])
        x *= factor
        mode = f"scale x{factor}"
    elif mode == "denormal":
        x = x.sign() * 1e-40
    elif mode == "max":
        x[:] = torch.finfo(t.dtype).max
    elif mode == "zeros":
        x[:] = 0
    both = rng.random() < 0.3 and mode.startswith("scale")
    _put(entries, name, x.to(t.dtype))
    if both:  # the partner too, so the product is scaled twice
        s = layer_of(name)
        partner = s[0] + (".lora_up.weight" if s[1] == ".lora_down.weight" else ".lora_down.weight")
        if partner in entries and decode(*entries[partner]).is_floating_point():
            p = _tensor(entries, partner)
            _put(entries, partner, (p.to(torch.float64) * float(mode.split("x")[1])).to(p.dtype))
    return pack(entries, metadata), f"{name}: {mode}" + (" (down and up)" if both else "")


def m_rank(rng, data):
    metadata, entries = _parsed(data)
    names = [n for n in layers(entries) if n + ".lora_down.weight" in entries and n + ".lora_up.weight" in entries]
    mode = rng.choice(
        ["huge_new", "huge_new", "rank0", "mismatch", "rank1", "up_kernel", "dims_mismatch", "rank_gt_layer"]
    )
    if mode in ("huge_new", "rank_gt_layer") or not names:
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        rank = 65536 if mode == "huge_new" else rng.choice([3, 8, 64])
        fan_in, out = rng.choice([1, 2]), rng.choice([1, 2])
        dtype = rng.choice([torch.float16, torch.float32])
        layer = "lora_unet_mid_block_attentions_0_proj_out"
        _put(entries, layer + ".lora_down.weight", (1e-3 * torch.randn(rank, fan_in, generator=g)).to(dtype))
        _put(entries, layer + ".lora_up.weight", (1e-3 * torch.randn(out, rank, generator=g)).to(dtype))
        if rng.random() < 0.5:
            _put(entries, layer + ".alpha", torch.tensor(float(rng.choice([1, rank])), dtype=torch.float32))
        return pack(entries, metadata), f"new layer: rank {rank}, in {fan_in}, out {out}, {dtype}"
    layer = rng.choice(names)
    down, up = _tensor(entries, layer + ".lora_down.weight"), _tensor(entries, layer + ".lora_up.weight")
    if mode == "rank0":
        down, up = down[:0], up[:, :0]
    elif mode == "mismatch":
        down = down[:-1] if rng.random() < 0.5 else torch.cat([down, down[:1]])
    elif mode == "rank1":
        down, up = down[:1], up[:, :1]
    elif mode == "up_kernel":
        up = (
            up.reshape(up.shape[0], up.shape[1], 1, 1).repeat(1, 1, 3, 3)
            if down.dim() == 4
            else up.reshape(*up.shape, 1, 1).repeat(1, 1, 1, 3)
        )
        if down.dim() == 2:
            down = down.reshape(*down.shape, 1, 1)
    elif mode == "dims_mismatch":
        if down.dim() == 4:
            up = up.reshape(up.shape[0], up.shape[1])
        else:
            up = up.reshape(*up.shape, 1, 1)
    _put(entries, layer + ".lora_down.weight", down.contiguous())
    _put(entries, layer + ".lora_up.weight", up.contiguous())
    return pack(entries, metadata), f"{layer}: {mode}: down {list(down.shape)}, up {list(up.shape)}"


def m_metadata(rng, data):
    _, entries = _parsed(data)
    bad = rng.choice([
        {"ss_network_dim": 4}, {"ss_network_dim": None}, {"ss_network_dim": {"a": "b"}}, {"ss_tag_frequency": ["a"]},
        {"ss_v2": True}, [], ["ss_network_dim", "4"], "ss_network_dim=4", 5, None, {}, {"": ""},
        {"ss_note": "\u00e9\u3042\U0001f600" * 100}, {"ss_training_comment": "x" * 100_000},
        {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
    ])  # fmt: skip
    packed = pack(entries)
    header, body = split(packed)
    pairs = list(header.items())
    if rng.random() < 0.2:
        pairs = [("__metadata__", {"a": "b"}), ("__metadata__", bad)] + pairs
        return join_pairs(pairs, body), f"__metadata__ twice, then {bad!r:.60}"
    return join_pairs([("__metadata__", bad)] + pairs, body), f"__metadata__ = {bad!r:.60}"


def m_clean(rng, data):
    """A rewrite that changes nothing a reader may care about (the control: must load as written)."""
    metadata, entries = read(data)
    notes = []
    if rng.random() < 0.5:
        order = list(entries)
        rng.shuffle(order)
        entries = {k: entries[k] for k in order}
        notes.append("tensor order shuffled")
    if rng.random() < 0.3:
        metadata = None
        notes.append("no metadata")
    if rng.random() < 0.3:
        entries = {k: v for k, v in entries.items() if not k.endswith(".alpha")}
        notes.append("no alphas")
    pad = rng.choice([0, 0, 1, 3, 8, 100])
    if pad:
        notes.append(f"header padded with {pad} more spaces")
    return pack(entries, metadata, pad=pad), ", ".join(notes) or "unchanged"


STRUCTURED = {
    "dtype": m_dtype, "shape": m_shape, "offsets": m_offsets, "keys": m_keys, "family": m_family,
    "alpha": m_alpha, "values": m_values, "rank": m_rank, "metadata": m_metadata,
}  # fmt: skip
RAW = {
    "header_len": m_header_len,
    "header_json": m_header_json,
    "data_flip": m_data_flip,
    "truncate": m_truncate,
    "extend": m_extend,
}


def m_combo(rng, data):
    notes = []
    for kind in rng.sample(
        ["dtype", "shape", "keys", "family", "alpha", "values", "rank", "values", "alpha"], rng.choice([2, 2, 3])
    ):
        try:
            data, note = STRUCTURED[kind](rng, data)
            notes.append(f"{kind}: {note}")
        except Skip:
            pass
    if rng.random() < 0.3:
        kind = rng.choice(["offsets", "metadata", "data_flip", "header_json"])
        try:
            data, note = {**STRUCTURED, **RAW}[kind](rng, data)
            notes.append(f"{kind}: {note}")
        except Skip:
            pass
    return data, "; ".join(notes)


MUTATIONS = {**RAW, **STRUCTURED, "combo": m_combo, "clean": m_clean}
KINDS = list(MUTATIONS)


@dataclass
class Case:
    kind: str
    seed: int
    base: str
    data: bytes
    note: str
    expect: dict | None = None  # for `clean`: the summary the load must give

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.seed}"


def make_case(kind: str, seed: int) -> Case:
    """The case (kind, seed): the same bytes on every run and machine."""
    rng = random.Random(f"fuzz_lora:{kind}:{seed}")
    base = rng.choice(bases())
    try:
        data, note = MUTATIONS[kind](rng, base.data)
    except Skip:
        data, note = base.data, "no mutation applied (the base file)"
    expect = expected_summary(data) if kind == "clean" else None
    return Case(kind, seed, base.name, data, note, expect)


# ---------------------------------------------------------------------------------------------
# What a valid LoRA is, and what a load gave.


def check_lora(lora) -> list[str]:
    """What is wrong with `lora` against the reader's contract (an empty list: valid)."""
    from sabun.lora.weights import LoRA, LoRAWeight

    if not isinstance(lora, LoRA):
        return [f"returned a {type(lora).__name__}, not a LoRA"]
    problems = []
    if not isinstance(lora.weights, dict) or not lora.weights:
        problems.append("no layers")
    if not isinstance(lora.metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in lora.metadata.items()
    ):
        problems.append(f"metadata is not a table of strings: {lora.metadata!r:.100}")
    for name, w in lora.weights.items() if isinstance(lora.weights, dict) else []:
        where = f"layer {name!r:.80}"
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: the name is not a non-empty string")
        if not isinstance(w, LoRAWeight):
            problems.append(f"{where}: a {type(w).__name__}, not a LoRAWeight")
            continue
        down, up, alpha = w.down, w.up, w.alpha
        if not isinstance(down, torch.Tensor) or not isinstance(up, torch.Tensor):
            problems.append(f"{where}: down / up are {type(down).__name__} / {type(up).__name__}, not tensors")
            continue
        bad = [f"{part} is {t.dtype}" for part, t in (("down", down), ("up", up)) if not t.is_floating_point()]
        if down.dim() not in (2, 4):
            bad.append(f"down is {down.dim()}-D {tuple(down.shape)}")
        if up.dim() != down.dim():
            bad.append(f"up is {up.dim()}-D {tuple(up.shape)}, down {down.dim()}-D")
        if any(d < 1 for d in (*down.shape, *up.shape)):
            bad.append(f"a dim below 1: down {tuple(down.shape)}, up {tuple(up.shape)}")
        if down.dim() >= 1 and up.dim() >= 2 and up.shape[1] != down.shape[0]:
            bad.append(f"ranks differ: down {tuple(down.shape)}, up {tuple(up.shape)}")
        if up.dim() == 4 and tuple(up.shape[2:]) != (1, 1):
            bad.append(f"up has kernel {tuple(up.shape[2:])}, not 1x1")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            bad.append(f"alpha is a {type(alpha).__name__}, not a number")
        elif not math.isfinite(alpha) or alpha <= 0:
            bad.append(f"alpha is {alpha}")
        if bad:
            problems.append(f"{where}: " + "; ".join(bad))
            continue
        nonfinite = [part for part, t in (("down", down), ("up", up)) if not bool(torch.isfinite(t.double()).all())]
        if nonfinite:
            problems.append(f"{where}: {' and '.join(nonfinite)} hold NaN or infinite values")
        elif not bool(torch.isfinite(w.delta()).all()):
            problems.append(f"{where}: its fp32 weight change (up @ down * alpha / r) is not finite")
    return problems


def is_valid(lora) -> bool:
    return not check_lora(lora)


def summary(lora) -> dict:
    """Per layer: down and up shapes, alpha, and a hash of their values in fp64 (any dtype they were read in)."""

    def digest(t):
        return hashlib.sha256(t.detach().double().contiguous().numpy().tobytes()).hexdigest()[:16]

    return {
        n: [list(w.down.shape), list(w.up.shape), float(w.alpha), digest(w.down), digest(w.up)]
        for n, w in lora.weights.items()
    }


def expected_summary(data: bytes) -> dict:
    """`summary` of the LoRA a clean file holds, from its bytes (missing alpha = rank), without the reader."""
    from sabun.lora.weights import LoRA, LoRAWeight

    _, entries = read(data)
    weights = {}
    for layer in layers(entries):
        down, up = decode(*entries[layer + ".lora_down.weight"]), decode(*entries[layer + ".lora_up.weight"])
        alpha = float(decode(*entries[layer + ".alpha"])) if layer + ".alpha" in entries else float(down.shape[0])
        weights[layer] = LoRAWeight(down, up, alpha)
    return summary(LoRA(weights))


# ---------------------------------------------------------------------------------------------
# The worker: loads files in its own process, so a hang or a crash is seen from outside.


def selftest_load(path):
    """A reader that misbehaves on request (by file name), to test the harness itself."""
    from sabun.lora.file import load_lora
    from sabun.lora.weights import LoRA, LoRAWeight

    stem = Path(path).stem
    if stem.endswith("hang"):
        while True:
            pass
    if stem.endswith("crash"):
        os.abort()
    if stem.endswith("raise"):
        raise KeyError("lora_down")
    if stem.endswith("invalid"):
        return LoRA({"lora_unet_x": LoRAWeight(torch.full((2, 2), math.nan), torch.ones(2, 2), 1.0)})
    if stem.endswith("oom"):
        return torch.empty(8 << 30, dtype=torch.uint8)
    return load_lora(path)


def worker_main(loader: str) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a reader that allocates wildly fails, not the machine
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the reader prints goes to the log, not into the protocol
    sys.stdout = sys.stderr
    torch.set_num_threads(1)
    from sabun.errors import SabunError
    from sabun.lora.file import load_lora

    if loader == "selftest":
        load = selftest_load
    elif loader.endswith(".py"):  # another implementation of the reader, e.g. an older one from git
        import importlib.util

        spec = importlib.util.spec_from_file_location("fuzz_lora_reader", loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        load = module.load_lora
    else:
        load = load_lora
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        path = json.loads(line)["path"]
        out: dict = {}
        try:
            lora = load(path)
        except SabunError as e:
            out = {"outcome": "error", "detail": str(e)}
        except BaseException:  # noqa: BLE001 -- anything else is what we are looking for
            out = {"outcome": "other", "detail": traceback.format_exc()}
        else:
            try:
                problems = check_lora(lora)
                out = {"outcome": "invalid" if problems else "valid", "detail": "; ".join(problems)}
                if not problems:
                    out["summary"] = summary(lora)
            except Exception:
                out = {"outcome": "invalid", "detail": "checking the LoRA failed:\n" + traceback.format_exc()}
        proto.write(json.dumps(out) + "\n")


class Worker:
    """A process that loads files with the reader; `load(path)` never takes longer than `timeout`."""

    def __init__(self, timeout: float = MAX_LOAD_SECONDS, loader: str = "load_lora", start_timeout: float = 180.0):
        self.timeout, self.loader, self.start_timeout = timeout, loader, start_timeout
        self.log = tempfile.TemporaryFile()
        self.proc: subprocess.Popen | None = None
        self.buf = b""
        self.starts = 0

    def start(self) -> None:
        self.log.seek(0)
        self.log.truncate()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", self.loader],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        self.buf = b""
        self.starts += 1
        line = self._readline(self.start_timeout)
        if not isinstance(line, dict) or not line.get("ready"):
            self.close()
            raise RuntimeError(f"the fuzz worker did not start ({line}): {self._log_tail()}")

    def _log_tail(self, n: int = 2000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-n:]

    def _readline(self, timeout: float):
        """The next JSON line, "timeout", or "eof"."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return "eof"
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def load(self, path: str | os.PathLike) -> dict:
        """{"outcome": valid | invalid | error | other | hang | crash, "detail": ..., ["summary": ...]}."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        try:
            self.proc.stdin.write((json.dumps({"path": str(path)}) + "\n").encode())
            self.proc.stdin.flush()
            reply = self._readline(self.timeout)
        except BrokenPipeError:
            reply = "eof"
        if reply == "timeout":
            self.close()
            return {"outcome": "hang", "detail": f"no answer within {self.timeout:g} s (the worker was killed)"}
        if reply == "eof":
            code = self.proc.wait(timeout=30)
            detail = f"the worker died (exit status {code}) while loading; its stderr ends:\n{self._log_tail()}"
            self.close()
            return {"outcome": "crash", "detail": detail}
        return reply

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            self.proc = None


@dataclass
class Result:
    case: Case
    outcome: str  # valid | error | invalid | other | hang | crash
    detail: str = ""
    path: str = ""

    @property
    def ok(self) -> bool:
        if self.case.kind == "clean":
            return self.outcome == "valid"
        return self.outcome in ("valid", "error")

    def report(self) -> str:
        return (
            f"case {self.case.id} (base {self.case.base}: {self.case.note}) gave {self.outcome}"
            f"{' (a clean file must load as written)' if self.case.kind == 'clean' and not self.ok else ''}:\n{self.detail}\n"
            f"remake it: python benchmarks/fuzz_lora.py --case {self.case.id} --keep DIR"
        )


def run_case(worker: Worker, case: Case, directory: str | os.PathLike, keep: bool = False) -> Result:
    path = Path(directory) / f"{case.kind}-{case.seed}.safetensors"
    path.write_bytes(case.data)
    try:
        reply = worker.load(path)
    finally:
        if not keep:
            path.unlink()
    outcome, detail = reply["outcome"], reply.get("detail", "")
    if outcome == "valid" and case.expect is not None and reply.get("summary") != case.expect:
        outcome, detail = (
            "invalid",
            f"loaded as something else than was written:\n got {reply.get('summary')}\n expected {case.expect}",
        )
    return Result(case, outcome, detail, str(path))


# ---------------------------------------------------------------------------------------------
# Explicit cases: each must be refused with a SabunError naming the file.


def _edit_layer(fn, base: str = "sd1_fp32") -> bytes:
    data = next(b for b in bases() if b.name == base).data
    metadata, entries = read(data)
    layer = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {part: _tensor(entries, layer + part) for part in SUFFIXES}
    fn(tensors)
    for part, t in tensors.items():
        _put(entries, layer + part, t.contiguous())
    return pack(entries, metadata)


def _set(**changes):
    keys = {"down": ".lora_down.weight", "up": ".lora_up.weight", "alpha": ".alpha"}

    def fn(t):
        for k, f in changes.items():
            t[keys[k]] = f(t[keys[k]])

    return lambda: _edit_layer(fn)


def _nan_first(t):
    t = t.clone()
    t.view(-1)[0] = math.nan
    return t


EXPLICIT = {
    "nan_weight": _set(down=_nan_first),
    "inf_weight": _set(up=lambda t: t.clone().fill_(math.inf)),
    "alpha_nan": _set(alpha=lambda t: torch.tensor(math.nan)),
    "alpha_negative": _set(alpha=lambda t: torch.tensor(-1.0)),
    "alpha_zero": _set(alpha=lambda t: torch.tensor(0.0)),
    "alpha_shape_4": _set(alpha=lambda t: torch.ones(4)),
    "down_3d": _set(down=lambda t: t.reshape(t.shape[0], t.shape[1] // 2, 2)),
    "int32_weights": _set(down=lambda t: _convert(t, "I32"), up=lambda t: _convert(t, "I32")),
    "bool_weights": _set(down=lambda t: t > 0, up=lambda t: t > 0),
    "complex_weights": _set(down=lambda t: t.to(torch.complex64), up=lambda t: t.to(torch.complex64)),
    "rank_0": _set(down=lambda t: t[:0], up=lambda t: t[:, :0]),
    "down_0d": _set(down=lambda t: t[0, 0].clone(), up=lambda t: t[:, :1]),
    "rank_mismatch": _set(down=lambda t: t[:-1]),
    "weights_x1e30": _set(down=lambda t: t * 1e30, up=lambda t: t * 1e30),
}


# ---------------------------------------------------------------------------------------------


COLUMNS = ["valid", "error", "invalid", "other", "hang", "crash"]


def fuzz(
    cases: int, seed: int, kinds: list[str], timeout: float, keep: str | None, show: int = 3, reader: str = "load_lora"
) -> int:
    counts: dict[str, Counter] = defaultdict(Counter)
    failures: dict[str, list[Result]] = defaultdict(list)
    no_path = Counter()
    worker = Worker(timeout=timeout, loader=reader)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(keep) if keep else Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            bases()
            worker.start()
            for i in range(cases):
                kind = kinds[i % len(kinds)]
                case = make_case(kind, seed * 1_000_000 + i // len(kinds))
                result = run_case(worker, case, directory, keep=bool(keep))
                counts[kind][result.outcome] += 1
                if result.outcome == "error" and result.path not in result.detail:
                    no_path[kind] += 1
                if not result.ok:
                    failures[result.outcome if kind != "clean" else "clean"].append(result)
                    counts[kind]["failed"] += 1
        finally:
            worker.close()
    seconds = time.perf_counter() - start
    print(
        f"{cases} cases, seed {seed}, {seconds:.1f} s ({cases / seconds:.0f} cases/s), worker started {worker.starts} time(s)\n"
    )
    print(
        f"| kind | cases | {' | '.join(c if c != 'error' else 'clean error' for c in COLUMNS)} | failed | error not naming the file |"
    )
    print("|---" * (len(COLUMNS) + 4) + "|")
    total = Counter()
    for kind in kinds:
        c = counts[kind]
        total.update(c)
        n = sum(c[col] for col in COLUMNS)
        print(f"| {kind} | {n} | {' | '.join(str(c[col]) for col in COLUMNS)} | {c['failed']} | {no_path[kind]} |")
        total["cases"] += n
    print(
        f"| all | {total['cases']} | {' | '.join(str(total[col]) for col in COLUMNS)} | {total['failed']} | {sum(no_path.values())} |"
    )
    for outcome, results in failures.items():
        label = "clean files not loaded as written" if outcome == "clean" else f"{outcome}"
        print(f"\n== {label}: {len(results)} case(s); the first {min(show, len(results))}:")
        for r in results[:show]:
            print("\n" + r.report())
        if len(results) > show:
            print(
                "\nall of them: " + " ".join(r.case.id for r in results[:200]) + (" ..." if len(results) > 200 else "")
            )
    return 1 if total["failed"] else 0


def one_case(case_id: str, timeout: float, keep: str | None, reader: str = "load_lora") -> int:
    kind, seed = case_id.rsplit(":", 1)
    case = make_case(kind, int(seed))
    worker = Worker(timeout=timeout, loader=reader)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(keep or tmp)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            result = run_case(worker, case, directory, keep=bool(keep))
        finally:
            worker.close()
    print(result.report())
    if keep:
        print(f"file: {result.path}")
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kind", action="append", choices=KINDS, help="only these kinds (repeat); default: all")
    parser.add_argument(
        "--timeout", type=float, default=MAX_LOAD_SECONDS, help="seconds one load may take before it counts as a hang"
    )
    parser.add_argument("--keep", help="write the case files into this folder and keep them")
    parser.add_argument("--case", help="run one case, KIND:SEED (as printed), and say what happened")
    parser.add_argument("--show", type=int, default=3, help="how many failures of each outcome to print in full")
    parser.add_argument(
        "--reader",
        default="load_lora",
        help="a .py file whose load_lora to fuzz instead of sabun's (e.g. an older file.py from git)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0
    if args.case:
        return one_case(
            args.case,
            args.timeout,
            args.keep,
            str(Path(args.reader).resolve()) if args.reader.endswith(".py") else args.reader,
        )
    reader = str(Path(args.reader).resolve()) if args.reader.endswith(".py") else args.reader
    return fuzz(args.cases, args.seed, args.kind or KINDS, args.timeout, args.keep, args.show, reader)


if __name__ == "__main__":
    sys.exit(main())
