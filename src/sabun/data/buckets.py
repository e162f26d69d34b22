"""Aspect-ratio buckets: training sizes of about the same area, one per aspect ratio.

Images are grouped by the bucket nearest their aspect ratio, so a tall render is trained tall
instead of being cropped to a square (which cuts off heads and feet). A batch holds one bucket.
"""

from __future__ import annotations

import math


def make_buckets(resolution: int, min_side: int, max_side: int, step: int) -> list[tuple[int, int]]:
    """All (width, height) with sides multiples of `step` in [min_side, max_side] and area <= resolution^2.

    For each width the tallest height that fits the area is kept (sd-scripts' scheme), plus the square.
    """
    area = resolution * resolution
    lo = max(step, math.ceil(min_side / step) * step)
    hi = max(lo, max_side // step * step)
    square = max(step, resolution // step * step)
    buckets = {(square, square)}
    for width in range(lo, hi + 1, step):
        height = min(hi, area // width // step * step)
        if height >= lo:
            buckets.add((width, height))
            buckets.add((height, width))
    return sorted(buckets)


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (in log ratio, so 2:1 and 1:2 are as far from 1:1)."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def square_bucket(resolution: int, step: int) -> tuple[int, int]:
    side = max(step, resolution // step * step)
    return side, side
