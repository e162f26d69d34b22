"""A procedural, skinned, VRoid-like anime figure, for testing the renderer without a downloaded model.

The figure is built from parametric tubes and ellipsoids in its rest pose (T or A), about 1.55 m
tall with a head of 1/6.5 of the height, facing +Z (VRM 1.0 / glTF) or turned to -Z for VRM 0.x.
Every model carries the features a renderer must handle: MToon materials with shade colours,
shading shift, toony and world-space outlines; an unlit material (eye highlights); a MASK material
with an RGBA texture and a texture transform (eyelashes); a BLEND material (cheek blush); morph
targets (mouth_open, blink, smile) whose defaults are not all zero (a slight smile is neutral).

Tessellation: `segments` sets the number of sectors around the limbs (twice that around the torso,
head and hair) and, in proportion, the number of rings along them, so triangles grow about as
`segments ** 2`: about 60 * segments ** 2 (10 -> ~5.9k, 22 -> ~28k, 40 -> ~95k for the default spec;
see `segments_for_triangles`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sabun.avatar.types import (
    REPEAT,
    Avatar,
    Material,
    Mesh,
    Meta,
    MToon,
    Node,
    Primitive,
    Skin,
    Texture,
    TextureRef,
)
from sabun.avatar.write import extensions_for, turn_around
from sabun.errors import SabunError

HAIRSTYLES = ("long", "medium", "short", "ponytail", "twintails")
BODIES = ("slim", "average", "curvy")
OUTFITS = ("none", "dress", "swimsuit", "bodysuit")
RESTS = ("T", "A")
A_POSE_DEGREES = 35.0
REFERENCE_HEIGHT = 1.55
"""The height all proportions below are given for; other heights scale them uniformly."""
SEGMENTS = (4, 100)
"""The range of `segments`: 4 is the coarsest figure that keeps its shape, 100 gives about 610k triangles
(0.6 s, 110 MB to build); the builder's arrays grow as segments squared, so the bound keeps a typo
such as 100000 from asking for hundreds of GiB."""
HEIGHTS = (0.1, 10.0)
"""The range of `height` in metres: from a figurine to a giant, all drawn with the same proportions."""

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class HumanoidSpec:
    """What the procedural figure looks like; the same spec always gives the same model."""

    name: str = "Sabun Humanoid"
    """The model's name (VRM meta name / 0.x title)."""
    height: float = 1.55
    """Metres from the soles to the top of the hair."""
    skin_colour: RGB = (255, 228, 214)
    """sRGB 0-255."""
    hair_colour: RGB = (92, 58, 46)
    """sRGB 0-255; the brows are a darker shade of it."""
    eye_colour: RGB = (66, 42, 98)
    """sRGB 0-255 of the irises."""
    outfit_colour: RGB = (52, 72, 150)
    """sRGB 0-255 of the dress, swimsuit or bodysuit."""
    ribbon_colour: RGB = (214, 36, 72)
    """sRGB 0-255 of the hair ribbon."""
    hairstyle: str = "medium"
    """One of HAIRSTYLES: a cap over the skull plus the style's volumes."""
    body: str = "average"
    """One of BODIES: widths of hips, waist, chest and thighs."""
    outfit: str = "dress"
    """One of OUTFITS; "none" leaves featureless skin, like a mannequin; "bodysuit" covers all but head, hands and feet."""
    ribbon: bool = True
    """A hair ribbon (a bow; one per tail for twintails)."""
    rest: str = "T"
    """Rest pose: "T" (arms along +-X) or "A" (arms A_POSE_DEGREES below horizontal)."""
    segments: int = 10
    """Tessellation: sectors around a limb; triangles grow about as its square (see module docstring)."""
    version: str = "1.0"
    """The model's own version string for the meta."""
    authors: tuple[str, ...] = ("sabun",)
    """Meta authors (VRM requires at least one)."""
    licence_url: str = "https://vrm.dev/licenses/1.0/"
    """Meta licenceUrl (written as 0.x licenseName "Other" plus otherLicenseUrl)."""
    avatar_permission: str = "everyone"
    """VRM 1.0 avatarPermission: onlyAuthor, onlySeparatelyLicensedPerson or everyone."""
    commercial_usage: str = "corporation"
    """VRM 1.0 commercialUsage: personalNonProfit, personalProfit or corporation."""
    allow_redistribution: bool = True
    """VRM 1.0 allowRedistribution."""
    modification: str = "allowModificationRedistribution"
    """VRM 1.0 modification: prohibited, allowModification or allowModificationRedistribution."""

    def __post_init__(self) -> None:
        for field_name, allowed in (("hairstyle", HAIRSTYLES), ("body", BODIES), ("outfit", OUTFITS), ("rest", RESTS)):
            if getattr(self, field_name) not in allowed:
                raise SabunError(f"humanoid {field_name} {getattr(self, field_name)!r} is unknown; choose one of "
                                 f"{', '.join(allowed)}")  # fmt: skip
        height_ok = isinstance(self.height, (int, float)) and not isinstance(self.height, bool)
        if not height_ok or not HEIGHTS[0] <= self.height <= HEIGHTS[1]:
            raise SabunError(
                f"humanoid height {self.height!r} is out of range; use {HEIGHTS[0]:g} to {HEIGHTS[1]:g} "
                f"metres (a character is about {REFERENCE_HEIGHT})"
            )
        segments_ok = isinstance(self.segments, int) and not isinstance(self.segments, bool)
        if not segments_ok or not SEGMENTS[0] <= self.segments <= SEGMENTS[1]:
            raise SabunError(
                f"humanoid segments {self.segments!r} is out of range; use a whole number from "
                f"{SEGMENTS[0]} to {SEGMENTS[1]} (10 gives about 6k triangles, 40 about 95k, "
                f"{SEGMENTS[1]} about 610k)"
            )
        for field_name in ("skin_colour", "hair_colour", "eye_colour", "outfit_colour", "ribbon_colour"):
            colour = getattr(self, field_name)
            if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
                raise SabunError(f"humanoid {field_name} {colour} must be three sRGB values 0-255")
        if not self.authors:
            raise SabunError("humanoid authors is empty; VRM needs at least one author")


# (VRM 1.0 bone, node name, parent bone); the order is the node and skin joint order
BONES: list[tuple[str, str, str | None]] = [
    ("hips", "J_Bip_C_Hips", None),
    ("spine", "J_Bip_C_Spine", "hips"),
    ("chest", "J_Bip_C_Chest", "spine"),
    ("upperChest", "J_Bip_C_UpperChest", "chest"),
    ("neck", "J_Bip_C_Neck", "upperChest"),
    ("head", "J_Bip_C_Head", "neck"),
    ("leftEye", "J_Adj_L_FaceEye", "head"),
    ("rightEye", "J_Adj_R_FaceEye", "head"),
]
for _side, _s in (("left", "L"), ("right", "R")):
    BONES += [
        (f"{_side}Shoulder", f"J_Bip_{_s}_Shoulder", "upperChest"),
        (f"{_side}UpperArm", f"J_Bip_{_s}_UpperArm", f"{_side}Shoulder"),
        (f"{_side}LowerArm", f"J_Bip_{_s}_LowerArm", f"{_side}UpperArm"),
        (f"{_side}Hand", f"J_Bip_{_s}_Hand", f"{_side}LowerArm"),
        (f"{_side}UpperLeg", f"J_Bip_{_s}_UpperLeg", "hips"),
        (f"{_side}LowerLeg", f"J_Bip_{_s}_LowerLeg", f"{_side}UpperLeg"),
        (f"{_side}Foot", f"J_Bip_{_s}_Foot", f"{_side}LowerLeg"),
        (f"{_side}Toes", f"J_Bip_{_s}_ToeBase", f"{_side}Foot"),
    ]
JOINT = {bone: i for i, (bone, _, _) in enumerate(BONES)}
MORPHS = ("mouth_open", "blink", "smile")
NEUTRAL_WEIGHTS = (0.0, 0.0, 0.3)
"""Default Face morph weights: the neutral expression is a slight smile."""

# Reference proportions in metres for a 1.55 m figure (see REFERENCE_HEIGHT).
HEAD_CENTRE = np.array([0.0, 1.425, 0.008])
HEAD_RADII = np.array([0.082, 0.112, 0.092])  # x (half width), y (half height), z (half depth)
HAIR_THICKNESS = 0.013
ARM_LENGTHS = (0.225, 0.205)  # upper arm, forearm
# body -> (hips, waist, chest, thighs, bust) width factors and bust height in metres
BODY_SHAPES = {
    "slim": (0.92, 0.92, 0.93, 0.9, 0.010),
    "average": (1.0, 1.0, 1.0, 1.0, 0.020),
    "curvy": (1.12, 0.95, 1.03, 1.12, 0.034),
}
# torso rings: y, half width, half depth, forward offset, and which width factor applies
TORSO = [
    (0.700, 0.000, 0.000, 0.000, "hips"),
    (0.712, 0.060, 0.045, 0.000, "hips"),
    (0.740, 0.115, 0.075, -0.003, "hips"),
    (0.790, 0.140, 0.088, -0.006, "hips"),
    (0.840, 0.138, 0.086, -0.006, "hips"),
    (0.900, 0.118, 0.076, -0.003, "waist"),
    (0.970, 0.102, 0.068, 0.000, "waist"),
    (1.040, 0.112, 0.074, 0.003, "chest"),
    (1.100, 0.122, 0.080, 0.006, "chest"),
    (1.160, 0.128, 0.076, 0.004, "chest"),
    (1.200, 0.120, 0.066, 0.000, "chest"),
    (1.225, 0.075, 0.050, 0.000, None),
    (1.245, 0.040, 0.036, 0.000, None),
    (1.300, 0.033, 0.033, 0.004, None),
    (1.340, 0.030, 0.030, 0.006, None),
    (1.352, 0.000, 0.000, 0.006, None),
]
# leg rings: y, radius (scaled by the thigh factor above the knee)
LEG = [(0.820, 0.0), (0.800, 0.060), (0.760, 0.078), (0.650, 0.068), (0.500, 0.052), (0.420, 0.045),
       (0.350, 0.050), (0.280, 0.049), (0.180, 0.036), (0.100, 0.029), (0.060, 0.028), (0.045, 0.0)]  # fmt: skip
# arm rings: distance along the arm from the upper-arm joint, radius
ARM = [(-0.075, 0.0), (-0.060, 0.030), (-0.020, 0.040), (0.020, 0.043), (0.120, 0.036), (0.225, 0.030),
       (0.290, 0.032), (0.400, 0.024), (0.430, 0.021), (0.445, 0.0)]  # fmt: skip
# foot rings: z, half width, half height, height of the centre
FOOT = [(-0.045, 0.0, 0.0, 0.040), (-0.035, 0.030, 0.030, 0.040), (0.000, 0.034, 0.040, 0.045),
        (0.050, 0.040, 0.030, 0.032), (0.100, 0.043, 0.022, 0.022), (0.140, 0.035, 0.016, 0.017),
        (0.155, 0.0, 0.0, 0.015)]  # fmt: skip
# hairstyle -> metres the hair hangs below the skull's equator at the sides and at the back
HAIR_LENGTHS = {"short": (0.03, 0.10), "medium": (0.17, 0.20), "long": (0.22, 0.48), "ponytail": (0.04, 0.08),
                "twintails": (0.05, 0.10)}  # fmt: skip


def build_humanoid(spec: HumanoidSpec = HumanoidSpec(), format: str = "vrm1") -> Avatar:
    """Build the figure `spec` describes, as stored in a file of `format` ("vrm1", "vrm0" or "gltf").

    The figure is modelled facing +Z; for "vrm0" it is turned to face -Z, as VRM 0.x files do.
    `path` is a placeholder naming the spec and `sha256` hashes the spec, since no file exists yet.
    """
    if format not in ("vrm1", "vrm0", "gltf"):
        raise SabunError(f"humanoid format {format!r} is unknown; choose vrm1, vrm0 or gltf")
    figure = _Figure(spec)
    avatar = figure.avatar()
    if format == "vrm0":
        avatar = turn_around(avatar)
    avatar.format = format
    avatar.sha256 = hashlib.sha256(repr((spec, format)).encode()).hexdigest()
    avatar.extensions_used = extensions_for(avatar, format)
    if format == "gltf":
        avatar.humanoid = {}
    return avatar


def segments_for_triangles(triangles: int, spec: HumanoidSpec = HumanoidSpec()) -> int:
    """The `segments` that gives `spec`'s figure about `triangles` triangles (within a few per cent).

    Fits count = a s^2 + b s + c through three cheap builds and solves it, since small parts
    (eyes, brows) have a floor on their tessellation that makes the count not purely quadratic.
    """
    probes = (8, 16, 32)
    counts = [_Figure(replace(spec, segments=s)).triangle_count() for s in probes]
    a, b, c = np.polyfit(probes, counts, 2)
    roots = np.roots([a, b, c - triangles])
    real = [r.real for r in roots if abs(r.imag) < 1e-9 and r.real > 0]
    return max(SEGMENTS[0], round(max(real))) if real else SEGMENTS[0]


def srgb_to_linear(colour: RGB) -> tuple[float, float, float]:
    """sRGB 0-255 -> linear 0-1 (the sRGB transfer function)."""
    c = np.asarray(colour, np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return tuple(float(v) for v in linear)


# --- geometry ---------------------------------------------------------------------------------------------------


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _tube(centres, sides, fronts, rx, rz, sectors: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A closed-around surface of rings: ring i is centres[i] + rx[i] cos(phi) sides[i] + rz[i] sin(phi) fronts[i].

    Rings of radius 0 are poles (their degenerate triangles are left out). With sides = axis x front
    the triangles wind counter-clockwise seen from outside, glTF's front face.
    Returns (positions (R * (C + 1), 3), uvs, triangles); the seam column is duplicated for the UVs.
    """
    centres, sides, fronts = (
        np.broadcast_to(np.asarray(a, np.float64), (len(rx), 3)) for a in (centres, sides, fronts)
    )
    rx, rz = np.asarray(rx, np.float64), np.asarray(rz, np.float64)
    rings = len(rx)
    phi = np.linspace(0.0, 2.0 * np.pi, sectors + 1)
    # (R, C+1, 3)
    grid = (centres[:, None] + rx[:, None, None] * np.cos(phi)[None, :, None] * sides[:, None]
            + rz[:, None, None] * np.sin(phi)[None, :, None] * fronts[:, None])  # fmt: skip
    u, v = np.meshgrid(phi / (2.0 * np.pi), np.linspace(0.0, 1.0, rings))
    uvs = np.stack([u, v], axis=-1).reshape(-1, 2)
    pole = (rx == 0) & (rz == 0)
    i, j = np.meshgrid(np.arange(rings - 1), np.arange(sectors), indexing="ij")
    a = i * (sectors + 1) + j
    b, d = a + sectors + 1, a + 1
    c = b + 1
    first = np.stack([a, b, c], axis=-1)[~pole[1:]]
    second = np.stack([a, c, d], axis=-1)[~pole[:-1]]
    return grid.reshape(-1, 3), uvs, np.concatenate([first.reshape(-1, 3), second.reshape(-1, 3)])


def _straight(origin, axis, front, s, rx, rz, forward=0.0, sectors: int = 8):
    """A tube along a straight `axis` through `origin`: rings at distances `s`, shifted `forward` along front."""
    axis = _normalize(np.asarray(axis, np.float64))
    front = np.asarray(front, np.float64)
    front = _normalize(front - np.dot(front, axis) * axis)
    side = np.cross(axis, front)
    s = np.asarray(s, np.float64)
    centres = (
        np.asarray(origin, np.float64) + s[:, None] * axis + np.asarray(forward, np.float64).reshape(-1, 1) * front
    )
    return _tube(centres, side, front, rx, rz, sectors)


def _ellipsoid(centre, up, front, radii, sectors: int, rings: int):
    """An ellipsoid with radii (side, up, front) about the frame (up x front, up, front)."""
    r_side, r_up, r_front = radii
    t = -np.cos(np.linspace(0.0, np.pi, rings))  # poles at both ends, rings denser near them
    r = np.sqrt(np.clip(1.0 - t * t, 0.0, None))
    r[[0, -1]] = 0.0
    return _straight(centre, up, front, t * r_up, r * r_side, r * r_front, sectors=sectors)


def _curve(points, reference_front, rx, rz, sectors: int):
    """A tube along the polyline `points`, its rings turned to face along the path's tangent."""
    points = np.asarray(points, np.float64)
    tangents = _normalize(np.gradient(points, axis=0))
    ref = np.asarray(reference_front, np.float64)
    fronts = _normalize(ref - (tangents @ ref)[:, None] * tangents)
    sides = np.cross(tangents, fronts)
    return _tube(points, sides, fronts, rx, rz, sectors)


def _normals(positions: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals, shared by coincident vertices so seams and poles shade smoothly."""
    key = np.round(positions * 1e5).astype(np.int64)
    _, group = np.unique(key, axis=0, return_inverse=True)
    group = group.reshape(-1)
    p = positions[triangles]
    face = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    summed = np.zeros((group.max() + 1, 3))
    for k in range(3):
        np.add.at(summed, group[triangles[:, k]], face)
    normals = summed[group]
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.where(length > 0, normals / np.maximum(length, 1e-30), np.array([0.0, 1.0, 0.0]))


def _rigid(n: int, bone: str) -> tuple[np.ndarray, np.ndarray]:
    joints = np.zeros((n, 4), np.uint16)
    joints[:, 0] = JOINT[bone]
    weights = np.zeros((n, 4), np.float32)
    weights[:, 0] = 1.0
    return joints, weights


def _chain(s: np.ndarray, boundaries: list[float], blends: list[float], bones: list[str]):
    """Weights along a chain of bones: bones[k] owns s between boundaries k-1 and k, and neighbours
    blend with a smoothstep over +-blends[k] around each boundary (so a bent joint stretches, not tears)."""
    n = len(s)
    ids = np.array([JOINT[b] for b in bones])
    joints = np.zeros((n, 4), np.uint16)
    weights = np.zeros((n, 4), np.float64)
    joints[:, 0] = ids[np.searchsorted(boundaries, s)]
    weights[:, 0] = 1.0
    for k, (boundary, blend) in enumerate(zip(boundaries, blends, strict=True)):
        t = (s - (boundary - blend)) / (2.0 * blend)
        near = (t > 0) & (t < 1)
        after = _smoothstep(t[near])
        joints[near, 0], joints[near, 1] = ids[k], ids[k + 1]
        weights[near, 0], weights[near, 1] = 1.0 - after, after
    return joints, weights.astype(np.float32)


class _Builder:
    """Collects parts (positions, uvs, triangles, skin) into one primitive, with per-part smooth normals."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, shape, skin) -> None:
        positions, uvs, triangles = shape
        joints, weights = skin(positions) if callable(skin) else _rigid(len(positions), skin)
        self.parts.append((positions, uvs, triangles, _normals(positions, triangles), joints, weights))

    def vertex_count(self) -> int:
        return sum(len(part[0]) for part in self.parts)

    def primitive(self, material: int, targets: list[np.ndarray] | None = None) -> Primitive:
        offsets = np.cumsum([0] + [len(p[0]) for p in self.parts])
        triangles = np.concatenate([p[2] + o for p, o in zip(self.parts, offsets, strict=False)])
        stack = [np.concatenate([p[k] for p in self.parts]) for k in (0, 1, 3, 4, 5)]
        positions, uvs, normals, joints, weights = stack
        # + 0.0 turns -0.0 into 0.0, so that turning the model round twice gives back the same bytes
        return Primitive(
            positions=positions.astype(np.float32) + np.float32(0), indices=triangles.astype(np.uint32),
            normals=normals.astype(np.float32) + np.float32(0), texcoords=[uvs.astype(np.float32)],
            joints=joints.astype(np.uint16), weights=weights.astype(np.float32), material=material,
            targets=[{"POSITION": t.astype(np.float32) + np.float32(0)} for t in targets or []],
        )  # fmt: skip


# --- the figure -------------------------------------------------------------------------------------------------


class _Figure:
    """The figure for one spec, in reference proportions scaled by height / REFERENCE_HEIGHT."""

    def __init__(self, spec: HumanoidSpec) -> None:
        self.spec = spec
        self.k = spec.height / REFERENCE_HEIGHT
        self.hips_w, self.waist_w, self.chest_w, self.thigh_w, self.bust = BODY_SHAPES[spec.body]
        self.seg = spec.segments
        self.small = max(6, spec.segments // 2)  # tessellation floor of eyes, brows and other small parts
        angle = math.radians(A_POSE_DEGREES if spec.rest == "A" else 0.0)
        self.arm_dir = {1: np.array([math.cos(angle), -math.sin(angle), 0.0]),
                        -1: np.array([-math.cos(angle), -math.sin(angle), 0.0])}  # fmt: skip
        self.bones = self._skeleton()

    # positions are built in reference metres; `avatar` scales them by k at the end
    def _skeleton(self) -> dict[str, np.ndarray]:
        p = {"hips": (0, 0.80, 0), "spine": (0, 0.89, 0), "chest": (0, 0.99, 0), "upperChest": (0, 1.09, 0),
             "neck": (0, 1.245, 0), "head": (0, 1.315, 0)}  # fmt: skip
        bones = {name: np.array(v, np.float64) for name, v in p.items()}
        for sign, side in ((1, "left"), (-1, "right")):
            eye = self._head_surface(sign * 0.036, HEAD_CENTRE[1] - 0.018)[0]
            bones[f"{side}Eye"] = eye - np.array([0, 0, 0.02])
            upper = np.array([sign * 0.12, 1.205, 0.0])
            bones[f"{side}Shoulder"] = np.array([sign * 0.025, 1.205, 0.0])
            bones[f"{side}UpperArm"] = upper
            bones[f"{side}LowerArm"] = upper + ARM_LENGTHS[0] * self.arm_dir[sign]
            bones[f"{side}Hand"] = upper + sum(ARM_LENGTHS) * self.arm_dir[sign]
            x = sign * 0.075 * self.hips_w
            bones[f"{side}UpperLeg"] = np.array([x, 0.76, 0.0])
            bones[f"{side}LowerLeg"] = np.array([x, 0.42, 0.0])
            bones[f"{side}Foot"] = np.array([x, 0.075, -0.005])
            bones[f"{side}Toes"] = np.array([x, 0.015, 0.09])
        return bones

    def _head_surface(self, x: float, y: float) -> tuple[np.ndarray, np.ndarray]:
        """The point on the front of the skull at (x, y), and the outward normal there."""
        _, cy, cz = HEAD_CENTRE
        t = (y - cy) / HEAD_RADII[1]
        r = math.sqrt(max(1.0 - t * t, 1e-6))
        rx, rz = HEAD_RADII[0] * r * self._jaw(t), HEAD_RADII[2] * r
        z = cz + rz * math.sqrt(max(1.0 - (x / rx) ** 2, 0.0))
        normal = _normalize(np.array([x / rx**2, (y - cy) / HEAD_RADII[1] ** 2 * r, (z - cz) / rz**2]))
        return np.array([x, y, z]), normal

    @staticmethod
    def _jaw(t):
        """Width factor of the head at height t (-1 chin .. 1 crown): the lower face narrows to a chin."""
        return 1.0 - 0.3 * np.clip(-t - 0.1, 0.0, 1.0) ** 1.3

    def _torso_rings(self, y: np.ndarray, grow: float = 0.0):
        """Half width, half depth and forward offset of the torso at heights y, grown by `grow` metres."""
        factor = {"hips": self.hips_w, "waist": self.waist_w, "chest": self.chest_w, None: 1.0}
        ys = np.array([row[0] for row in TORSO])
        rx = np.interp(y, ys, [row[1] * factor[row[4]] for row in TORSO])
        rz = np.interp(y, ys, [row[2] * (1.0 + (factor[row[4]] - 1.0) * 0.6) for row in TORSO])
        cz = np.interp(y, ys, [row[3] for row in TORSO])
        open_ring = rx > 0
        return rx + grow * open_ring, rz + grow * open_ring, cz

    def _bust(self, positions: np.ndarray) -> np.ndarray:
        """Push the front of the chest forward into two soft bumps."""
        out = positions.copy()
        for sign in (1, -1):
            d2 = ((positions[:, 0] - sign * 0.055) / 0.032) ** 2 + ((positions[:, 1] - 1.10) / 0.04) ** 2
            out[:, 2] += np.where(positions[:, 2] > 0, self.bust * np.exp(-0.5 * d2), 0.0)
        return out

    def _torso(self, y_from: float, y_to: float, grow: float, rings: int):
        return self._torso_at(np.linspace(y_from, y_to, rings), grow)

    def _torso_at(self, y: np.ndarray, grow: float):
        """The torso's surface with rings at heights `y` (bottom up), grown by `grow` metres."""
        rx, rz, cz = self._torso_rings(y, grow)
        positions, uvs, triangles = _straight((0, 0, 0), (0, 1, 0), (0, 0, 1), y, rx, rz, cz, sectors=2 * self.seg)
        return self._bust(positions), uvs, triangles

    def _torso_skin(self, positions):
        b = self.bones
        boundaries = [b[n][1] for n in ("spine", "chest", "upperChest", "neck", "head")]
        return _chain(positions[:, 1], boundaries, [0.03, 0.03, 0.03, 0.025, 0.02],
                      ["hips", "spine", "chest", "upperChest", "neck", "head"])  # fmt: skip

    def _leg(self, side: str, ys: np.ndarray, grow: float = 0.0):
        """The `side` leg's tube with rings at heights `ys` (top down), grown by `grow` metres; (shape, skin)."""
        radius = np.interp(-ys, [-y for y, _ in LEG], [r * (self.thigh_w if y > 0.42 else 1.0) for y, r in LEG])
        radius = radius + grow * (radius > 0)
        # rings run downwards, so the axis points down too: the triangles then wind outwards
        leg = _straight(
            (self.bones[f"{side}UpperLeg"][0], 0, 0), (0, -1, 0), (0, 0, 1), -ys, radius, radius, sectors=self.seg
        )
        bones = ["hips", *(f"{side}{n}" for n in ("UpperLeg", "LowerLeg", "Foot"))]
        knee, ankle = self.bones[f"{side}LowerLeg"][1], self.bones[f"{side}Foot"][1]
        return leg, lambda p: _chain(-p[:, 1], [-0.76, -knee, -ankle], [0.03, 0.035, 0.02], bones)

    def _arm(self, sign: int, side: str, ss: np.ndarray, grow: float = 0.0):
        """The `side` arm's tube with rings at distances `ss` from the shoulder joint, grown by `grow`; (shape, skin)."""
        origin, d = self.bones[f"{side}UpperArm"], self.arm_dir[sign]
        radius = np.interp(ss, [s for s, _ in ARM], [r for _, r in ARM])
        radius = radius + grow * (radius > 0)
        arm = _straight(origin, d, (0, 0, 1), ss, radius, radius, sectors=self.seg)
        bones = [f"{side}{n}" for n in ("Shoulder", "UpperArm", "LowerArm", "Hand")]
        return arm, lambda p: _chain(
            (p - origin) @ d, [0.0, ARM_LENGTHS[0], sum(ARM_LENGTHS)], [0.03, 0.03, 0.015], bones
        )

    def body(self, builder: _Builder) -> None:
        seg = self.seg
        builder.add(self._torso(TORSO[0][0], TORSO[-1][0], 0.0, 3 * seg), self._torso_skin)
        cx, cy, cz = HEAD_CENTRE
        t = -np.cos(np.linspace(0.0, np.pi, seg + 2))
        r = np.sqrt(np.clip(1.0 - t * t, 0.0, None))
        r[[0, -1]] = 0.0
        head = _straight((cx, cy, cz), (0, 1, 0), (0, 0, 1), t * HEAD_RADII[1], r * HEAD_RADII[0] * self._jaw(t),
                         r * HEAD_RADII[2], sectors=2 * seg)  # fmt: skip
        builder.add(head, "head")
        for sign, side in ((1, "left"), (-1, "right")):
            b = {n: self.bones[f"{side}{n}"] for n in ("Hand", "UpperLeg")}
            # leg: straight down from inside the pelvis into the foot
            builder.add(*self._leg(side, np.linspace(LEG[0][0], LEG[-1][0], 2 * seg)))
            # foot: along +Z, its height profile along +Y
            zs = np.linspace(FOOT[0][0], FOOT[-1][0], seg)
            fz = [row[0] for row in FOOT]
            foot = _straight((b["UpperLeg"][0], 0, 0), (0, 0, 1), (0, 1, 0), zs, np.interp(zs, fz, [r[1] for r in FOOT]),
                             np.interp(zs, fz, [r[2] for r in FOOT]), np.interp(zs, fz, [r[3] for r in FOOT]),
                             sectors=seg)  # fmt: skip
            toes_z = self.bones[f"{side}Toes"][2]
            builder.add(foot, lambda p, s=side, tz=toes_z: _chain(p[:, 2], [tz], [0.02], [f"{s}Foot", f"{s}Toes"]))
            # arm: from inside the shoulder to the wrist, along the rest-pose arm direction
            d = self.arm_dir[sign]
            builder.add(*self._arm(sign, side, np.linspace(ARM[0][0], ARM[-1][0], 2 * seg)))
            # hand: a mitten, palm down in the T pose, and a thumb pointing forward
            hand = b["Hand"]
            builder.add(_ellipsoid(hand + 0.07 * d, d, (0, 0, 1), (0.016, 0.075, 0.040), seg, seg), f"{side}Hand")
            thumb_dir = _normalize(d + np.array([0, 0, 1.0]))
            tt = np.linspace(0.0, 1.0, self.small)
            thumb_r = 0.011 * np.sqrt(np.clip(np.sin(np.pi * tt), 0, None))
            thumb = _straight(hand + 0.02 * d + np.array([0, -0.004, 0.02]), thumb_dir, (0, 1, 0),
                              -0.005 + 0.06 * tt, thumb_r, thumb_r, sectors=self.small)  # fmt: skip
            builder.add(thumb, f"{side}Hand")

    def face(self) -> list[tuple[str, _Builder, list[np.ndarray]]]:
        """Face parts per material: (material name, parts, morph deltas per target)."""
        small = self.small
        cy = HEAD_CENTRE[1]
        parts = {name: _Builder() for name in ("EyeWhite", "Iris", "EyeHighlight", "Brow", "Mouth", "Eyelash", "Blush")}
        eye_line = cy - 0.018
        up = np.array([0.0, 1.0, 0.0])
        for sign, side in ((1, "left"), (-1, "right")):
            point, n = self._head_surface(sign * 0.036, eye_line)
            eye_up = _normalize(up - np.dot(up, n) * n)
            eye = f"{side}Eye"
            parts["EyeWhite"].add(_ellipsoid(point - 0.001 * n, eye_up, n, (0.021, 0.026, 0.004), small, small), eye)
            parts["Iris"].add(_ellipsoid(point + 0.0012 * n - 0.002 * eye_up, eye_up, n, (0.0145, 0.02, 0.004), small,
                                         small), eye)  # fmt: skip
            # both highlights on the same side, as a single light would place them
            shine = point + 0.0036 * n + 0.007 * eye_up + 0.005 * np.cross(eye_up, n)
            parts["EyeHighlight"].add(_ellipsoid(shine, eye_up, n, (0.0045, 0.0055, 0.0016), small, small), eye)
            parts["Eyelash"].add(self._lashes(point + 0.0025 * n, eye_up, n), "head")
            brow_a = self._head_surface(sign * 0.018, cy + 0.028)[0]
            brow_b = self._head_surface(sign * 0.062, cy + 0.033)[0]
            tt = np.linspace(0.0, 1.0, small)
            brow_r = 0.0032 * np.sqrt(np.clip(np.sin(np.pi * tt), 0, None))
            mid_n = self._head_surface(sign * 0.04, cy + 0.03)[1]
            parts["Brow"].add(_straight(brow_a + 0.004 * mid_n, brow_b - brow_a, mid_n, tt * np.linalg.norm(brow_b - brow_a),
                                        brow_r, 0.4 * brow_r, sectors=small), "head")  # fmt: skip
            cheek, cheek_n = self._head_surface(sign * 0.048, cy - 0.048)
            parts["Blush"].add(_ellipsoid(cheek + 0.0008 * cheek_n, _normalize(up - np.dot(up, cheek_n) * cheek_n),
                                          cheek_n, (0.013, 0.006, 0.0015), small, small), "head")  # fmt: skip
        mouth, mouth_n = self._head_surface(0.0, cy - 0.072)
        parts["Mouth"].add(
            _ellipsoid(mouth - 0.0005 * mouth_n, up, mouth_n, (0.011, 0.0035, 0.002), small, small), "head"
        )
        out = []
        for name, builder in parts.items():
            positions = np.concatenate([p[0] for p in builder.parts])
            deltas = [np.zeros_like(positions) for _ in MORPHS]
            if name == "Mouth":
                dy = positions[:, 1] - mouth[1]
                deltas[0][:, 1] = np.where(dy < 0, 3.0 * dy, dy)  # opens mostly downwards
                deltas[2][:, 1] = 0.004 * (positions[:, 0] / 0.011) ** 2  # corners up
            if name in ("EyeWhite", "Iris", "EyeHighlight"):
                # closing lids: the eye collapses onto a line near its bottom, behind the lashes
                deltas[1][:, 1] = (eye_line - 0.016) - positions[:, 1]
            if name == "Eyelash":
                # ... and the lashes slide down over it along the face, drawing the closed eye's arc
                for v, (x, y, _) in enumerate(positions):
                    deltas[1][v] = self._head_surface(x, y - 0.03)[0] - self._head_surface(x, y)[0]
            out.append((name, builder, deltas))
        return out

    def _lashes(self, centre, up, front):
        """An arc-shaped strip over the top of the eye, textured with lashes (cut out by alpha)."""
        side = np.cross(up, front)
        alpha = np.linspace(math.radians(10), math.radians(170), 2 * self.small)
        # rows: inner edge on the eye's outline, outer edge further out; columns along the arc
        scale = np.array([1.0, 1.3])[:, None, None]
        ring = np.cos(alpha)[:, None] * 0.022 * side + np.sin(alpha)[:, None] * 0.026 * up
        grid = centre + scale * ring[None]  # (2, A, 3)
        columns = len(alpha)
        u, v = np.meshgrid(np.linspace(0.0, 1.0, columns), [0.0, 1.0])
        j = np.arange(columns - 1)
        a, b = j, j + columns
        triangles = np.concatenate([np.stack([a, b, b + 1], -1), np.stack([a, b + 1, a + 1], -1)])
        return grid.reshape(-1, 3), np.stack([u, v], -1).reshape(-1, 2), triangles

    def hair(self, builder: _Builder) -> list[np.ndarray]:
        """The hair: a cap over the skull hanging to the style's lengths, plus tails. Returns ribbon anchors."""
        style = self.spec.hairstyle
        centre = HEAD_CENTRE + np.array([0.0, 0.004, -0.004])
        rx, ry, rz = HEAD_RADII + HAIR_THICKNESS
        side_len, back_len = HAIR_LENGTHS[style]
        columns, rows = 2 * self.seg, self.seg + 2
        psi = np.linspace(-np.pi, np.pi, columns + 1)  # 0 at the front (+Z), seam at the back
        a = np.abs(psi)
        # bangs end just above the brows, jagged; the sides and back hang below the skull's equator
        bangs = 0.74 + 0.05 * np.abs(np.sin(5.0 * psi))
        hang = np.interp(a, [0.0, 0.9, 1.7, 2.2, np.pi], [0.0, 0.0, side_len, back_len, back_len])
        end = np.where(a < 0.8, bangs, 0.0) + np.where(a >= 0.8, 1.0 + hang / 0.1, 0.0)
        blend = _smoothstep((a - 0.75) / 0.35)
        end = (1.0 - blend) * bangs + blend * np.maximum(end, 1.0 + hang / 0.1)
        t = np.linspace(0.0, 1.0, rows)[:, None] * end[None, :]  # (rows, columns+1)
        theta = np.minimum(t, 1.0) * (np.pi / 2)
        below = np.maximum(t - 1.0, 0.0) * 0.1  # metres below the equator
        x = rx * np.sin(theta) * np.sin(psi) * (1.0 + 0.6 * below)
        z = centre[2] + rz * np.sin(theta) * np.cos(psi) * (1.0 + 1.0 * below) - 0.15 * below
        y = centre[1] + ry * np.cos(theta) - below
        grid = np.stack([x, y, z], axis=-1)
        u, v = np.meshgrid(np.linspace(0.0, 1.0, columns + 1), np.linspace(0.0, 1.0, rows))
        i, j = np.meshgrid(np.arange(rows - 1), np.arange(columns), indexing="ij")
        p00 = i * (columns + 1) + j
        p10, p01 = p00 + columns + 1, p00 + 1
        # row 0 is the crown's pole: keep only the triangles that are not degenerate there
        first = np.stack([p00, p10, p10 + 1], -1).reshape(-1, 3)
        second = np.stack([p00, p10 + 1, p01], -1)[1:].reshape(-1, 3)
        builder.add((grid.reshape(-1, 3), np.stack([u, v], -1).reshape(-1, 2), np.concatenate([first, second])), "head")
        top = centre[1] + ry
        anchors = []
        if style == "ponytail":
            base = np.array([0.0, centre[1] + 0.03, centre[2] - rz + 0.01])
            tt = np.linspace(0.0, 1.0, 2 * self.seg)
            points = base + np.stack([0 * tt, -0.45 * tt, -0.09 * np.sin(np.pi * tt / 1.2)], -1)
            radius = 0.045 * _tail_profile(tt)
            builder.add(_curve(points, (0, 0, -1), radius, radius * 0.8, self.seg), "head")
            anchors.append((base + np.array([0.0, -0.01, -0.025]), np.array([0.0, 0.0, -1.0])))
        elif style == "twintails":
            tt = np.linspace(0.0, 1.0, 2 * self.seg)
            for sign in (1, -1):
                base = np.array([sign * 0.07, top - 0.05, centre[2] - 0.05])
                points = base + np.stack([sign * 0.09 * np.sin(np.pi * tt / 1.4), -0.5 * tt, -0.04 * tt], -1)
                radius = 0.04 * _tail_profile(tt)
                builder.add(_curve(points, (0, 0, -1), radius, radius, self.seg), "head")
                anchors.append((base + np.array([sign * 0.03, 0.0, -0.01]), _normalize(np.array([sign, 0.6, -0.4]))))
        else:
            direction = _normalize(np.array([0.75, 0.75, 0.1]))
            point = centre + direction * np.array([rx, ry, rz])
            anchors.append((point, direction))
        return anchors

    def ribbon(self, builder: _Builder, anchors) -> None:
        """A bow at each anchor: a knot, two loops and two short tails, lying on the hair."""
        small = self.small
        for point, normal in anchors:
            lateral = np.cross(normal, np.array([0.0, 0.0, 1.0]) if abs(normal[2]) < 0.9 else np.array([1.0, 0, 0]))
            lateral = _normalize(lateral)
            up = np.cross(lateral, normal)
            centre = point + 0.006 * normal
            builder.add(_ellipsoid(centre, up, normal, (0.012, 0.012, 0.009), small, small), "head")
            for sign in (1, -1):
                loop_axis = _normalize(sign * lateral + 0.25 * up)
                builder.add(_ellipsoid(centre + 0.028 * sign * lateral + 0.006 * up, loop_axis, normal,
                                       (0.018, 0.027, 0.007), small, small), "head")  # fmt: skip
                tail_axis = _normalize(-up + 0.5 * sign * lateral)
                builder.add(_ellipsoid(centre + 0.024 * tail_axis, tail_axis, normal, (0.008, 0.022, 0.004), small,
                                       small), "head")  # fmt: skip

    def outfit(self, builder: _Builder) -> None:
        seg = self.seg
        if self.spec.outfit == "bodysuit":
            self._bodysuit(builder)
            return
        if self.spec.outfit == "swimsuit":
            builder.add(self._torso(TORSO[0][0], 1.15, 0.004, 2 * seg), self._torso_skin)
        else:
            builder.add(self._torso(0.95, 1.17, 0.005, seg), self._torso_skin)
            y = np.linspace(1.0, 0.52, seg + 1)
            top_rx, top_rz, _ = self._torso_rings(np.array([1.0]), 0.008)
            flare = ((1.0 - y) / 0.48) ** 1.3
            skirt = _straight((0, 0, 0), (0, 1, 0), (0, 0, 1), y, top_rx + (0.27 - top_rx) * flare,
                              top_rz + (0.23 - top_rz) * flare, -0.01 * flare, sectors=2 * seg)  # fmt: skip
            builder.add(skirt, "hips")
        for sign in (1, -1):
            rx, rz, cz = self._torso_rings(np.array([1.16]), 0.004)
            x = sign * 0.065
            front_z = cz[0] + rz[0] * math.sqrt(max(1 - (x / rx[0]) ** 2, 0)) + self.bust * 0.3
            back_z = cz[0] - rz[0] * math.sqrt(max(1 - (x / rx[0]) ** 2, 0))
            tt = np.linspace(0.0, 1.0, self.small + 2)
            points = np.stack(
                [np.full_like(tt, x), 1.16 + 0.07 * np.sin(np.pi * tt), front_z + (back_z - front_z) * tt], -1
            )
            radius = np.full_like(tt, 0.007)
            radius[[0, -1]] = 0.0
            builder.add(_curve(points, (0, 1, 0), radius, 0.35 * radius, self.small), "upperChest")

    def _bodysuit(self, builder: _Builder) -> None:
        """A tight suit: the torso from the crotch to the base of the neck, sleeves to the wrists, legs to the ankles.

        Each piece is the skin's own surface grown a few millimetres and skinned like it, so the suit
        bends with the body; it is open only at the neck, wrists and ankles, where its edge lies a few
        millimetres off the skin (too little to see a gap).
        """
        seg = self.seg
        # Every piece keeps the skin's own rings (as `body` places them): with rings elsewhere the
        # skin's facets poke through the suit's where the profile turns sharply (the shoulders) or a
        # joint bends (the shoulder in the arms-at-sides pose).
        torso = np.linspace(TORSO[0][0], TORSO[-1][0], 3 * seg)
        legs = np.linspace(LEG[0][0], LEG[-1][0], 2 * seg)
        arms = np.linspace(ARM[0][0], ARM[-1][0], 2 * seg)
        # a round neckline, above the foot (its top is at 0.085 m) and before the hand (at 0.43 m)
        neck, ankle, wrist = 1.222, 0.11, 0.41
        builder.add(self._torso_at(np.append(torso[torso < neck], neck), 0.004), self._torso_skin)
        for sign, side in ((1, "left"), (-1, "right")):
            builder.add(*self._leg(side, np.append(legs[legs > ankle], ankle), grow=0.003))
            builder.add(*self._arm(sign, side, np.append(arms[arms < wrist], wrist), grow=0.003))

    def materials(self) -> tuple[list[Material], list[Texture]]:
        spec = self.spec
        skin, hair, eye = (srgb_to_linear(c) for c in (spec.skin_colour, spec.hair_colour, spec.eye_colour))

        def toon(name, colour, shade, alpha=1.0, outline=0.0, outline_colour=(0.0, 0.0, 0.0), **kw):
            mtoon = MToon(shade_colour=tuple(float(c * s) for c, s in zip(colour, shade, strict=True)),
                          shading_shift=-0.05, shading_toony=0.9, outline_mode="world" if outline else "none",
                          outline_width=outline, outline_colour=outline_colour, outline_lighting_mix=1.0)  # fmt: skip
            return Material(name=name, base_colour=(*colour, alpha), mtoon=mtoon, **kw)

        hair_mat = toon("Hair", hair, (0.55, 0.55, 0.62), outline=0.0025,
                        outline_colour=tuple(0.3 * c for c in hair), double_sided=True)  # fmt: skip
        hair_mat.mtoon.shading_shift, hair_mat.mtoon.shading_toony = -0.1, 0.85
        materials = {
            "Skin": toon("Skin", skin, (0.8, 0.62, 0.62), outline=0.002, outline_colour=tuple(0.35 * c for c in skin)),
            "Hair": hair_mat,
            "EyeWhite": toon("EyeWhite", srgb_to_linear((250, 250, 252)), (0.75, 0.75, 0.85)),
            "Iris": toon("Iris", eye, (0.6, 0.6, 0.6)),
            "EyeHighlight": Material(name="EyeHighlight", base_colour=(1.0, 1.0, 1.0, 1.0), unlit=True),
            "Brow": toon("Brow", tuple(0.45 * c for c in hair), (0.7, 0.7, 0.7)),
            "Mouth": toon("Mouth", srgb_to_linear((150, 62, 70)), (0.7, 0.6, 0.6)),
            "Eyelash": toon("Eyelash", srgb_to_linear((48, 34, 40)), (0.8, 0.8, 0.8), alpha_mode="MASK",
                            alpha_cutoff=0.5, double_sided=True,
                            base_texture=TextureRef(texture=0, scale=(2.0, 1.0), offset=(0.0, 0.0))),
            "Blush": toon("Blush", srgb_to_linear((255, 118, 128)), (0.9, 0.8, 0.8), alpha=0.5, alpha_mode="BLEND"),
        }  # fmt: skip
        if spec.outfit != "none":
            colour = srgb_to_linear(spec.outfit_colour)
            materials["Outfit"] = toon("Outfit", colour, (0.6, 0.6, 0.7), outline=0.002,
                                       outline_colour=tuple(0.3 * c for c in colour), double_sided=True)  # fmt: skip
        if spec.ribbon:
            colour = srgb_to_linear(spec.ribbon_colour)
            materials["Ribbon"] = toon("Ribbon", colour, (0.6, 0.55, 0.6), outline=0.0015,
                                       outline_colour=tuple(0.3 * c for c in colour))  # fmt: skip
        return list(materials.values()), [Texture(image=_lash_texture(), name="Eyelash", nearest=True, wrap_s=REPEAT,
                                                  wrap_t=REPEAT)]  # fmt: skip

    def meshes(self) -> tuple[list[Mesh], list[Material], list[Texture]]:
        materials, textures = self.materials()
        index = {m.name: i for i, m in enumerate(materials)}
        body = _Builder()
        self.body(body)
        meshes = [Mesh("Body", [body.primitive(index["Skin"])])]
        face = [builder.primitive(index[name], deltas) for name, builder, deltas in self.face()]
        meshes.append(Mesh("Face", face, weights=list(NEUTRAL_WEIGHTS)))
        hair = _Builder()
        anchors = self.hair(hair)
        meshes.append(Mesh("Hair", [hair.primitive(index["Hair"])]))
        if self.spec.outfit != "none":
            outfit = _Builder()
            self.outfit(outfit)
            meshes.append(Mesh("Outfit", [outfit.primitive(index["Outfit"])]))
        if self.spec.ribbon:
            ribbon = _Builder()
            self.ribbon(ribbon, anchors)
            meshes.append(Mesh("Ribbon", [ribbon.primitive(index["Ribbon"])]))
        return meshes, materials, textures

    def triangle_count(self) -> int:
        return sum(len(p.indices) for mesh in self.meshes()[0] for p in mesh.primitives)

    def avatar(self) -> Avatar:
        k = self.k
        meshes, materials, textures = self.meshes()
        for mesh in meshes:
            for prim in mesh.primitives:
                prim.positions = (prim.positions * k).astype(np.float32) + np.float32(0)
                prim.targets = [
                    {"POSITION": (t["POSITION"] * k).astype(np.float32) + np.float32(0)} for t in prim.targets
                ]
        world = {bone: self.bones[bone] * k for bone, _, _ in BONES}
        nodes = [Node(name="Root")]
        for bone, node_name, parent in BONES:
            origin = world[parent] if parent else np.zeros(3)
            nodes.append(Node(name=node_name, parent=JOINT[parent] + 1 if parent else 0,
                              translation=(world[bone] - origin).astype(np.float32) + np.float32(0)))  # fmt: skip
        for i, node in enumerate(nodes[1:], start=1):
            nodes[node.parent].children.append(i)
        mesh_nodes = []
        for m, mesh in enumerate(meshes):
            mesh_nodes.append(len(nodes))
            nodes.append(Node(name=mesh.name, parent=0, mesh=m, skin=0))
        nodes[0].children += mesh_nodes
        # rest rotations are identity, so each inverse bind is a translation by minus the joint's world position
        inverse_bind = np.tile(np.eye(4, dtype=np.float32), (len(BONES), 1, 1))
        inverse_bind[:, :3, 3] = 0.0 - np.array([world[bone] for bone, _, _ in BONES], np.float32)
        spec = self.spec
        meta = Meta(name=spec.name, version=spec.version, authors=list(spec.authors), licence=spec.licence_url,
                    avatar_permission=spec.avatar_permission, commercial_usage=spec.commercial_usage,
                    allow_sexual=False, allow_violent=False, allow_redistribution=spec.allow_redistribution,
                    modification=spec.modification)  # fmt: skip
        return Avatar(
            path=Path(f"<humanoid {spec.name}>"), sha256="", format="vrm1", nodes=nodes, roots=[0], meshes=meshes,
            skins=[Skin(joints=list(range(1, len(BONES) + 1)), inverse_bind=inverse_bind, name="Skeleton")],
            materials=materials, textures=textures, humanoid={bone: JOINT[bone] + 1 for bone, _, _ in BONES},
            meta=meta,
        )  # fmt: skip


def _tail_profile(t: np.ndarray) -> np.ndarray:
    """Relative radius along a hair tail (t = 0 at the head, 1 at the tip): full quickly, tapering to a point."""
    return np.interp(t, [0.0, 0.04, 0.18, 0.6, 0.9, 1.0], [0.0, 0.7, 1.0, 0.8, 0.45, 0.0])


def _lash_texture() -> np.ndarray:
    """16 x 8 RGBA: dark lashes as tapering vertical strokes on transparent texels (alpha 0 or 255 only)."""
    image = np.zeros((8, 16, 4), np.uint8)
    image[..., :3] = (48, 34, 40)
    column = np.arange(16)
    row = np.arange(8)[:, None]
    # a solid lid line along the bottom (v = 0 is the eye's edge), strokes of varying length above it
    length = 3 + (column * 5) % 5
    stroke = (column % 3 != 2) & (row >= 8 - length)
    image[..., 3] = np.where((row >= 6) | stroke, 255, 0)
    return image
