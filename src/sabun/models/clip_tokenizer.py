"""CLIP's real 49,408-token tokenizer, derived offline from the BPE merges shipped in the package.

OpenAI's CLIP builds its vocabulary from one file, `bpe_simple_vocab_16e6.txt.gz`: the 256 byte
symbols, the same with the end-of-word marker `</w>`, one token per merge (the first 48,894 merges
of the file), then `<|startoftext|>` and `<|endoftext|>`. The `vocab.json` / `merges.txt` that
Hugging Face ships for `openai/clip-vit-large-patch14` are exactly this list, so deriving them here
gives the tokenizer of SD 1.x, SD 2.x and both SDXL text encoders with no download.

The tokenizers differ only in padding: SD 1.x (and SDXL's first encoder) pad with
`<|endoftext|>`, OpenCLIP (SD 2.x, SDXL's second encoder) pads with `!` (id 0).
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib.resources import files

from transformers import CLIPTokenizer

from sabun.models.tokenizer import BOS, END, EOS, byte_symbols

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
N_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48,894 merges after the byte symbols, before the two specials
OPENCLIP_PAD = "!"


@lru_cache(maxsize=1)
def clip_vocab() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """CLIP's (vocab, merges), exactly as OpenAI's `SimpleTokenizer` builds them."""
    raw = files("sabun").joinpath("assets", "clip", BPE_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : N_MERGES + 1])  # line 0 is a version header
    # CLIP orders the byte symbols as its bytes_to_unicode() dict does: printable bytes first, then the
    # shifted ones, both ascending, which is ascending code-point order.
    symbols = sorted(byte_symbols())
    tokens = symbols + [s + END for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    if len(tokens) != VOCAB_SIZE or len(set(tokens)) != VOCAB_SIZE:
        raise RuntimeError(
            f"sabun/assets/clip/{BPE_FILE}: gives {len(set(tokens))} distinct tokens, expected {VOCAB_SIZE}; reinstall sabun"
        )
    return {token: i for i, token in enumerate(tokens)}, merges


def clip_tokenizer(pad_token: str = EOS, max_length: int = 77) -> CLIPTokenizer:
    """The CLIP tokenizer; `pad_token` is `<|endoftext|>` (OpenAI CLIP) or `!` (OpenCLIP)."""
    vocab, merges = clip_vocab()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=max_length, pad_token=pad_token)
