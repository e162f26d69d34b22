"""A real CLIP tokenizer over a small, made-up vocabulary, built with no network.

Tiny and toy models cannot download the 49,408-token CLIP vocabulary, and do not need it: their
prompts use a few hundred booru tags. This builds a byte-level BPE vocabulary in CLIP's own layout
(256 byte symbols, the same with the end-of-word marker `</w>`, one merge chain per known word,
then `<|startoftext|>` and `<|endoftext|>`), so `CLIPTokenizer` and every pipeline that calls it
run unchanged, each known word becomes one token, and unknown words fall back to characters.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from transformers import CLIPTokenizer

END = "</w>"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_symbols() -> list[str]:
    """CLIP/GPT-2's map from the 256 byte values to printable unicode characters, in byte order.

    Printable Latin-1 bytes stand for themselves; the rest are shifted past 255 so that no symbol
    is whitespace or a control character.
    """
    printable = (
        set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    )
    symbols, shifted = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def word_merges(word: str) -> list[tuple[str, str]]:
    """The left-to-right merge chain that turns `word`'s characters into one `word</w>` token."""
    chars = list(word[:-1]) + [word[-1] + END]
    merges, left = [], chars[0]
    for right in chars[1:]:
        merges.append((left, right))
        left = left + right
    return merges


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Return (vocab, merges) for a CLIP BPE tokenizer that knows `words` as single tokens.

    Words are lower-cased and split the way CLIP pre-tokenizes (letters, digits, punctuation);
    `"blonde hair"` contributes `blonde` and `hair`.
    """
    pieces = sorted({p for w in words for p in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", w.lower())})
    symbols = byte_symbols()
    vocab_list = symbols + [s + END for s in symbols]
    merges: list[tuple[str, str]] = []
    seen = set(vocab_list)
    for piece in pieces:
        if len(piece) < 2:
            continue
        for left, right in word_merges(piece):
            token = left + right
            if token not in seen:
                seen.add(token)
                merges.append((left, right))
                vocab_list.append(token)
    vocab_list += [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def build_clip_tokenizer(words: list[str], max_length: int = 77) -> CLIPTokenizer:
    """A `CLIPTokenizer` whose vocabulary holds `words` (see module docstring)."""
    vocab, merges = build_vocab(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def write_tokenizer_files(words: list[str], folder: Path) -> None:
    """Write `vocab.json` and `merges.txt` for `words` into `folder` (the layout diffusers loads)."""
    vocab, merges = build_vocab(words)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
