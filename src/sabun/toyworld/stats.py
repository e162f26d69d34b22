"""A style statistic that tells the toy world's `anime` renders from its `3d` ones.

Cel shading is flat: between neighbouring pixels the brightness either does not change (inside a
tone) or jumps (outlines, the lit/shadow step). Smooth 3D shading changes a little everywhere. So
the share of gentle changes among all changes is low for `anime` and high for `3d`.
"""

from __future__ import annotations

import numpy as np

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def soft_gradient_share(image: np.ndarray, flat: float = 0.004, steep: float = 0.05) -> float:
    """Share of the non-flat neighbour differences of an RGB uint8 image that are gentle.

    A difference is the change of luma (0-1) between horizontally or vertically adjacent pixels; it
    is flat below `flat`, steep from `steep`, gentle in between. Returns gentle / (gentle + steep),
    0 for an image without changes.
    """
    luma = image.astype(np.float32) @ _LUMA / 255  # (h, w)
    diffs = np.concatenate([np.abs(np.diff(luma, axis=1)).ravel(), np.abs(np.diff(luma, axis=0)).ravel()])
    gentle = int(((diffs > flat) & (diffs < steep)).sum())
    changes = gentle + int((diffs >= steep).sum())
    return gentle / changes if changes else 0.0
