"""A 3D character as sabun holds it: what the loader reads, the writer writes and the renderer draws.

Conventions (those of glTF 2.0): right-handed, +Y up, metres; quaternions are (x, y, z, w);
colour factors are linear RGB(A); texture images are sRGB RGBA uint8. Everything is plain numpy,
so posing and framing are testable without OpenGL.

Humanoid bone names are VRM 1.0's (`hips`, `spine`, `chest`, `upperChest`, `neck`, `head`,
`leftUpperArm`, `leftLowerArm`, `leftHand`, `leftUpperLeg`, `leftLowerLeg`, `leftFoot`,
`leftToes`, ... and the finger bones); VRM 0.x names are translated on load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# glTF sampler wrap modes
REPEAT, CLAMP_TO_EDGE, MIRRORED_REPEAT = 10497, 33071, 33648
ALPHA_MODES = ("OPAQUE", "MASK", "BLEND")
OUTLINE_MODES = ("none", "world", "screen")
FORMATS = ("vrm0", "vrm1", "gltf")


@dataclass
class Texture:
    """A decoded image with its sampler."""

    image: np.ndarray
    """(H, W, 4) uint8 RGBA, sRGB as stored."""
    name: str = ""
    wrap_s: int = REPEAT
    wrap_t: int = REPEAT
    nearest: bool = False
    """Magnification filter NEAREST (pixel-art textures); otherwise linear with mipmaps."""


@dataclass
class TextureRef:
    """A material's use of a texture: which UV set, and `KHR_texture_transform` if any."""

    texture: int
    """Index into Avatar.textures."""
    texcoord: int = 0
    offset: tuple[float, float] = (0.0, 0.0)
    scale: tuple[float, float] = (1.0, 1.0)
    rotation: float = 0.0
    """Radians, as KHR_texture_transform defines it."""


@dataclass
class MToon:
    """The MToon parameters the renderer uses, in VRM 1.0's meaning (0.x values are converted on load).

    Shading as VRM 1.0 defines it: s = dot(N, L) + shading_shift, then
    t = linearstep(-1 + toony, 1 - toony, s) and colour = mix(shade, lit, t).
    """

    shade_colour: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Linear RGB multiplied into the base colour in shadow."""
    shade_texture: TextureRef | None = None
    shading_shift: float = 0.0
    """Added to dot(N, L) before the step (VRM 1.0): negative values widen the shade, positive ones the lit side."""
    shading_toony: float = 0.9
    """0 (smooth) .. 1 (hard two-tone)."""
    outline_mode: str = "none"
    """One of OUTLINE_MODES."""
    outline_width: float = 0.0
    """Metres for `world`; a fraction of the screen height for `screen`."""
    outline_colour: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Linear RGB."""
    outline_lighting_mix: float = 1.0


@dataclass
class Material:
    name: str = ""
    base_colour: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    """Linear RGBA factor."""
    base_texture: TextureRef | None = None
    emissive: tuple[float, float, float] = (0.0, 0.0, 0.0)
    alpha_mode: str = "OPAQUE"
    """One of ALPHA_MODES."""
    alpha_cutoff: float = 0.5
    double_sided: bool = False
    unlit: bool = False
    """KHR_materials_unlit, or an MToon-free VRM unlit shader."""
    mtoon: MToon | None = None


@dataclass
class Primitive:
    """One draw call: triangles of one material. Morph targets are kept, not applied."""

    positions: np.ndarray
    """(N, 3) float32."""
    indices: np.ndarray
    """(M, 3) uint32 triangles (strips and fans converted; points and lines dropped on load)."""
    normals: np.ndarray | None = None
    """(N, 3) float32, or None (the renderer computes flat-ish vertex normals)."""
    texcoords: list[np.ndarray] = field(default_factory=list)
    """TEXCOORD_0, TEXCOORD_1, ...: (N, 2) float32 each."""
    colours: np.ndarray | None = None
    """COLOR_0 as (N, 4) float32 linear, or None."""
    joints: np.ndarray | None = None
    """(N, 4) int: indices into the skin's joint list."""
    weights: np.ndarray | None = None
    """(N, 4) float32 skin weights (normalised to sum 1 on load)."""
    material: int | None = None
    """Index into Avatar.materials; None is glTF's default material."""
    targets: list[dict[str, np.ndarray]] = field(default_factory=list)
    """Morph targets: {"POSITION": (N, 3), "NORMAL": (N, 3)} deltas."""


@dataclass
class Mesh:
    name: str
    primitives: list[Primitive]
    weights: list[float] = field(default_factory=list)
    """Default morph weights (glTF `mesh.weights`); the neutral expression."""


@dataclass
class Skin:
    joints: list[int]
    """Node indices."""
    inverse_bind: np.ndarray
    """(J, 4, 4) float32; identity where the file gives none."""
    name: str = ""


@dataclass
class Node:
    name: str
    parent: int | None = None
    children: list[int] = field(default_factory=list)
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    rotation: np.ndarray = field(default_factory=lambda: np.array([0, 0, 0, 1], np.float32))
    """Quaternion (x, y, z, w)."""
    scale: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))
    matrix: np.ndarray | None = None
    """(4, 4) local matrix when the file gives one instead of TRS (column vectors: p' = M @ p)."""
    mesh: int | None = None
    skin: int | None = None


@dataclass
class Meta:
    """The model's licence and authorship, normalised over VRM 0.x and 1.0."""

    name: str = ""
    version: str = ""
    authors: list[str] = field(default_factory=list)
    licence: str = ""
    """VRM 1.0 `licenseUrl`, or VRM 0.x `licenseName` (plus `otherLicenseUrl` when given)."""
    avatar_permission: str | None = None
    """`onlyAuthor`, `onlySeparatelyLicensedPerson` or `everyone` (VRM 0.x `allowedUserName` mapped)."""
    commercial_usage: str | None = None
    allow_sexual: bool | None = None
    allow_violent: bool | None = None
    allow_redistribution: bool | None = None
    modification: str | None = None
    raw: dict = field(default_factory=dict)
    """The file's own meta object (thumbnail reference left out), for the record."""


@dataclass
class Avatar:
    """Everything sabun uses from one .vrm / .glb / .gltf file."""

    path: Path
    sha256: str
    format: str
    """One of FORMATS."""
    nodes: list[Node]
    roots: list[int]
    """Root nodes of the default scene."""
    meshes: list[Mesh]
    skins: list[Skin]
    materials: list[Material]
    textures: list[Texture]
    humanoid: dict[str, int] = field(default_factory=dict)
    """VRM 1.0 humanoid bone name -> node index; empty for plain glTF."""
    meta: Meta = field(default_factory=Meta)
    extensions_used: list[str] = field(default_factory=list)

    def mesh_names(self) -> list[str]:
        return [mesh.name for mesh in self.meshes]

    def triangle_count(self) -> int:
        return sum(len(p.indices) for mesh in self.meshes for p in mesh.primitives)

    def scene_nodes(self) -> list[int]:
        """The nodes the default scene shows (what is drawn): its roots and everything below them, parents first."""
        order, stack = [], list(reversed(self.roots))
        while stack:
            i = stack.pop()
            order.append(i)
            stack.extend(reversed(self.nodes[i].children))
        return order
