"""95 % intervals: Wilson's for a rate, a percentile bootstrap for a mean.

With 16 or 48 images per rate an interval is about +-0.1 to +-0.2 wide; a figure given without
one reads as more exact than it is.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a rate `successes / trials` (0..1); (0, 1) when there are no trials."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap(values, statistic=np.mean, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap 95 % interval of `statistic` (np.mean, np.median: reducing along axis 1)
    of `values`, resampled with replacement under a fixed seed (the same data give the same interval)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    stats = statistic(x[rng.integers(0, x.size, size=(resamples, x.size))], axis=1)
    return (float(np.quantile(stats, 0.025)), float(np.quantile(stats, 0.975)))


def bootstrap_mean(values, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap 95 % interval of the mean of `values`."""
    return bootstrap(values, np.mean, resamples, seed)


def rate(hits) -> dict:
    """{'rate', 'low', 'high', 'n'} of a list of booleans."""
    hits = [bool(h) for h in hits]
    low, high = wilson(sum(hits), len(hits))
    return {"rate": sum(hits) / len(hits) if hits else math.nan, "low": low, "high": high, "n": len(hits)}


def mean(values) -> dict:
    """{'mean', 'low', 'high', 'n'} of a list of numbers."""
    x = np.asarray(values, dtype=np.float64).ravel()
    low, high = bootstrap_mean(x)
    return {"mean": float(x.mean()) if x.size else math.nan, "low": low, "high": high, "n": int(x.size)}
