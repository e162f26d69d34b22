"""What a reader sees in generated images: the one interface between the evaluation protocol and
the instruments that read pictures (the toy evaluator on the toy model, a booru tagger on real ones).

A reader turns N images into `Readings`, per image: how 3D the picture looks, the hair colour it
reads (if it reads colours), whether it sees each of the target's identity attributes, and which
backgrounds and poses it sees. The protocol (`sabun.evaluate.metrics.measure`) computes every
metric from readings alone, so no metric is computed twice, once per reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol as TypingProtocol

import numpy as np

# The protocol's prompted backgrounds and poses, by the names the readers report them under.
BACKGROUNDS = ("outdoor", "indoor", "blue", "pink")
POSES = ("arms-up", "hands-on-hips")


@dataclass
class Readings:
    """A reader's view of N images (all arrays and lists have length N)."""

    p_3d: np.ndarray  # (N,) how 3D / realistic each image looks, 0..1
    identity: dict[str, np.ndarray]  # attribute (e.g. "hairstyle", "ribbon") -> (N,) bool: seen as the target has it
    backgrounds: list[frozenset[str]]  # per image, the BACKGROUNDS names seen
    poses: list[frozenset[str]]  # per image, the POSES names seen
    hair_lab: np.ndarray | None = None  # (N, 3) CIE L*a*b* of the hair, when the reader measures colour

    def __len__(self) -> int:
        return len(self.p_3d)


@dataclass(frozen=True)
class Attribute:
    """One identity attribute of the target, as the report names it."""

    key: str  # metrics key, e.g. "hairstyle"
    title: str  # e.g. "target hairstyle (1girl)"
    better: str = "higher"  # "higher" when the target has it; "lower" for one it must not show


class Reader(TypingProtocol):
    """Anything that reads images for the protocol."""

    name: str  # e.g. "toy evaluator", "tagger wd-vit-v3"

    def attributes(self, target) -> list[Attribute]:
        """The identity attributes this reader checks for `target`, in report order."""
        ...

    def read(self, images: np.ndarray, target) -> Readings:
        """Read uint8 RGB images (N, H, W, 3) against `target` (a character spec)."""
        ...
