"""Colours of the toy world: parsing, CIE L*a*b*, and booru colour names by nearest colour.

Booru tags name colours coarsely (`blonde hair`, `blue eyes`), while a character's colour is any RGB.
The name is the palette entry nearest in CIE L*a*b* (CIE76 distance), because L*a*b* distances follow
perceived differences far better than RGB ones: a honey blonde is nearer `blonde` than `orange` or
`brown` there, as a person would say.
"""

from __future__ import annotations

import functools

import numpy as np

from sabun.errors import SabunError

RGB = tuple[int, int, int]

# Anchors are typical anime colours for each tag, not colorimetric definitions.
HAIR_COLOURS: dict[str, RGB] = {
    "blonde": (250, 222, 120),
    "orange": (240, 130, 40),
    "red": (205, 35, 40),
    "pink": (245, 150, 190),
    "purple": (135, 75, 190),
    "blue": (45, 85, 205),
    "aqua": (80, 205, 210),
    "green": (55, 155, 65),
    "brown": (115, 70, 40),
    "black": (30, 28, 36),
    "grey": (150, 150, 158),
    "white": (240, 240, 246),
}

EYE_COLOURS: dict[str, RGB] = {
    "blue": (40, 100, 220),
    "aqua": (60, 200, 210),
    "green": (40, 160, 70),
    "yellow": (235, 200, 40),
    "orange": (240, 130, 30),
    "red": (205, 30, 40),
    "pink": (240, 120, 180),
    "purple": (140, 60, 200),
    "brown": (120, 70, 35),
    "grey": (140, 140, 150),
    "black": (25, 25, 30),
}

# Clothes, ribbons and solid backgrounds.
THING_COLOURS: dict[str, RGB] = {
    "red": (210, 40, 50),
    "orange": (240, 140, 40),
    "yellow": (240, 215, 60),
    "green": (60, 160, 70),
    "blue": (50, 95, 210),
    "purple": (135, 70, 190),
    "pink": (245, 150, 190),
    "brown": (120, 75, 45),
    "black": (30, 30, 35),
    "grey": (150, 150, 155),
    "white": (245, 245, 248),
}

_XYZ_FROM_LINEAR = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])


def srgb_to_lab(rgb: RGB | np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) of 8-bit sRGB colours; accepts shape (..., 3), returns float64 (..., 3)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _XYZ_FROM_LINEAR.T / _D65_WHITE
    eps = (6 / 29) ** 3
    f = np.where(xyz > eps, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def delta_e(a: RGB, b: RGB) -> float:
    """CIE76 colour difference (Euclidean distance in L*a*b*) between two sRGB colours."""
    return float(np.linalg.norm(srgb_to_lab(a) - srgb_to_lab(b)))


@functools.lru_cache(maxsize=16)
def _palette_lab(items: tuple[tuple[str, RGB], ...]) -> tuple[tuple[str, ...], np.ndarray]:
    return tuple(name for name, _ in items), srgb_to_lab(np.array([rgb for _, rgb in items]))


def nearest_name(rgb: RGB, palette: dict[str, RGB]) -> str:
    """The palette name whose anchor is nearest to `rgb` in L*a*b*."""
    names, anchors = _palette_lab(tuple(palette.items()))
    return names[int(np.argmin(np.linalg.norm(anchors - srgb_to_lab(rgb), axis=-1)))]


def to_hex(rgb: RGB) -> str:
    """`#rrggbb` for an RGB triple."""
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def parse_colour(value: object, palette: dict[str, RGB], what: str) -> RGB:
    """Read a colour given as `#rrggbb`, `[r, g, b]` (0-255) or a palette name.

    `what` names the field in the error, which lists the accepted forms and names.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in palette:
            return palette[text]
        if len(text) == 7 and text.startswith("#"):
            try:
                return (int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16))
            except ValueError:
                pass
    elif isinstance(value, (list, tuple)) and len(value) == 3:
        if all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value):
            return (value[0], value[1], value[2])
    raise SabunError(
        f"{what} = {value!r} is not a colour; give '#rrggbb', [r, g, b] with 0-255 integers, "
        f"or one of: {', '.join(palette)}"
    )


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference between L*a*b* arrays of shape (..., 3) (kL = kC = kH = 1).

    The difference a person sees: about 1 is just noticeable, 2-3 is close, over 10 is another colour.
    """
    lab1, lab2 = np.asarray(lab1, dtype=np.float64), np.asarray(lab2, dtype=np.float64)
    L1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    L2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    c_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_mean**7 / (c_mean**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    dL, dC = L2 - L1, c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(c1p * c2p == 0, 0.0, dh)
    dH = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2)
    L_mean, cp_mean = (L1 + L2) / 2, (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_mean = np.where(np.abs(h1p - h2p) > 180, np.where(h_sum < 360, h_sum + 360, h_sum - 360), h_sum) / 2
    h_mean = np.where(c1p * c2p == 0, h_sum, h_mean)
    t = (
        1
        - 0.17 * np.cos(np.radians(h_mean - 30))
        + 0.24 * np.cos(np.radians(2 * h_mean))
        + 0.32 * np.cos(np.radians(3 * h_mean + 6))
        - 0.20 * np.cos(np.radians(4 * h_mean - 63))
    )
    s_l = 1 + 0.015 * (L_mean - 50) ** 2 / np.sqrt(20 + (L_mean - 50) ** 2)
    s_c = 1 + 0.045 * cp_mean
    s_h = 1 + 0.015 * cp_mean * t
    r_t = (
        -2
        * np.sqrt(cp_mean**7 / (cp_mean**7 + 25.0**7))
        * np.sin(np.radians(60 * np.exp(-(((h_mean - 275) / 25) ** 2))))
    )
    return np.sqrt((dL / s_l) ** 2 + (dC / s_c) ** 2 + (dH / s_h) ** 2 + r_t * (dC / s_c) * (dH / s_h))
