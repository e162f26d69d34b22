"""The method's shot list: views and zoom levels framed from the character's own bones.

Every model is framed by the same rule, so that the stepping-stone characters and the target are
seen identically: the top of the frame is just above the top of the head, the bottom is at a bone
height that names the zoom (the collarbones for a portrait, the waist for an upper-body shot,
mid-thigh for a cowboy shot, the soles for a full-body shot), and the frame is centred on the
character's vertical axis (the hips bone). The camera is a perspective one with a slightly long
lens (20 degree vertical field of view, like a portrait lens), level with the frame's centre and
looking horizontally, so that verticals stay vertical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sabun.avatar.pose import UP, Posed
from sabun.avatar.types import Avatar
from sabun.errors import SabunError

VIEWS = ("front", "left", "right", "behind", "front-left", "front-right", "back-left", "back-right")
ZOOMS = ("portrait", "upper-body", "cowboy-shot", "full-body")
METHOD_VIEWS = ("front", "behind")
FIELD_OF_VIEW = 20.0
"""Vertical, degrees."""
TOP_MARGIN = 0.04
"""Share of the frame's height left above the head."""

# View -> (forward, left) weights of the camera's position relative to the character.
_VIEW_DIRECTIONS = {
    "front": (1, 0),
    "behind": (-1, 0),
    "left": (0, 1),
    "right": (0, -1),
    "front-left": (1, 1),
    "front-right": (1, -1),
    "back-left": (-1, 1),
    "back-right": (-1, -1),
}


@dataclass
class Camera:
    """A pinhole camera: world -> clip by `projection @ view`."""

    eye: np.ndarray
    target: np.ndarray
    view: np.ndarray
    """(4, 4) world -> camera (x right, y up, looking along -z)."""
    projection: np.ndarray
    """(4, 4) camera -> clip, OpenGL convention."""
    near: float
    far: float
    fov: float = FIELD_OF_VIEW

    def project(self, point: np.ndarray) -> np.ndarray:
        """World point -> (x, y) in [0, 1] image coordinates, y down (as in the PNG)."""
        clip = self.projection @ self.view @ np.append(np.asarray(point, dtype=np.float64), 1.0)
        ndc = clip[:2] / clip[3]
        return np.array([(ndc[0] + 1) / 2, (1 - ndc[1]) / 2])

    def image_position(self, point: np.ndarray) -> np.ndarray | None:
        """`project(point)`, or None for a point with no place in the image (on or behind the camera's plane)."""
        clip = self.projection @ self.view @ np.append(np.asarray(point, dtype=np.float64), 1.0)
        if not clip[3] > 1e-12:
            return None
        where = self.project(point)
        return where if np.isfinite(where).all() else None

    def to_json(self) -> dict:
        return {
            "eye": [round(float(v), 6) for v in self.eye],
            "target": [round(float(v), 6) for v in self.target],
            "fov_degrees": self.fov,
            "view_matrix": np.round(self.view, 6).tolist(),
            "projection_matrix": np.round(self.projection, 6).tolist(),
        }


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = UP) -> np.ndarray:
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    true_up = np.cross(right, forward)
    m = np.eye(4)
    m[0, :3], m[1, :3], m[2, :3] = right, true_up, -forward
    m[:3, 3] = -m[:3, :3] @ eye
    return m


def perspective(fov_degrees: float, near: float, far: float) -> np.ndarray:
    f = 1.0 / math.tan(math.radians(fov_degrees) / 2)
    return np.array(
        [
            [f, 0, 0, 0],
            [0, f, 0, 0],
            [0, 0, (far + near) / (near - far), 2 * far * near / (near - far)],
            [0, 0, -1, 0],
        ]
    )


@dataclass
class Heights:
    """Heights (world y) that framing uses, read from the posed character."""

    top: float
    """The highest vertex (top of the head or hair)."""
    bottom: float
    """The lowest vertex (the soles)."""
    neck: float
    waist: float
    hips: float
    knees: float
    centre: np.ndarray
    """A point on the character's vertical axis (the hips bone, or the middle of the vertices)."""


def heights(posed: Posed, avatar: Avatar) -> Heights:
    """Bone heights, with proportions of a standing figure where the humanoid map lacks a bone."""
    vertices = posed.vertices()
    top, bottom = float(vertices[:, 1].max()), float(vertices[:, 1].min())
    tall = top - bottom

    def bone_y(names: tuple[str, ...], share: float) -> float:
        """The first named bone's height; else `share` of the way up from the soles."""
        for name in names:
            p = posed.bone(name, avatar)
            if p is not None:
                return float(p[1])
        return bottom + share * tall

    hips = bone_y(("hips",), 0.52)
    neck = bone_y(("neck", "head"), 0.84)
    chest = bone_y(("upperChest", "chest"), 0.74)
    knees = bone_y(("leftLowerLeg", "rightLowerLeg"), 0.28)
    waist = bone_y(("spine",), 0.58)
    waist = max(waist, hips + 0.3 * (chest - hips))
    hips_bone = posed.bone("hips", avatar)
    centre = hips_bone if hips_bone is not None else (vertices.min(0) + vertices.max(0)) / 2
    return Heights(
        top=top, bottom=bottom, neck=neck, waist=waist, hips=hips, knees=knees, centre=np.asarray(centre, np.float64)
    )


def frame_span(h: Heights, zoom: str) -> tuple[float, float]:
    """(bottom, top) world heights that the square frame of `zoom` shows."""
    head = h.top - h.neck
    bottom = {
        "portrait": h.neck - 0.55 * head,
        "upper-body": h.waist,
        "cowboy-shot": h.hips - 0.55 * (h.hips - h.knees),
        "full-body": h.bottom - 0.03 * (h.top - h.bottom),
    }[zoom]
    top = (h.top - TOP_MARGIN * bottom) / (1 - TOP_MARGIN)
    return bottom, top


def check_framing(posed: Posed, avatar: Avatar, h: Heights, zoom: str, bottom: float, top: float) -> None:
    """Refuse a shot that would frame nothing: humanoid bones that do not sit in the mesh they should move."""
    tall = h.top - h.bottom
    fix = "fix the humanoid bone mapping (or the skin) in the VRM exporter and export again"
    if not top - bottom > 0.01 * tall:
        source = {
            "portrait": "the neck bone",
            "upper-body": "the spine and hips bones",
            "cowboy-shot": "the hips and knee bones",
            "full-body": "the lowest vertex",
        }[zoom]
        raise SabunError(
            f"{avatar.path}: its humanoid bones do not match its mesh: the {zoom} shot would frame heights {bottom:.3g} "
            f"to {top:.3g} (from {source}), but the mesh spans {h.bottom:.3g} to {h.top:.3g}; {fix}"
        )
    vertices = posed.vertices()
    low, high = vertices.min(0), vertices.max(0)
    outside = np.maximum(np.maximum(low - h.centre, h.centre - high), 0.0)[[0, 2]]
    if float(np.linalg.norm(outside)) > tall:
        raise SabunError(
            f"{avatar.path}: its hips bone is at ({', '.join(f'{v:.3g}' for v in h.centre)}), {float(np.linalg.norm(outside)):.3g} "
            f"to the side of its mesh (which is {tall:.3g} tall), so every shot, centred on the hips, would miss it; {fix}"
        )


def camera_for(posed: Posed, avatar: Avatar, view: str, zoom: str) -> Camera:
    """The camera of one shot: `view` around the character, framing `zoom`.

    Raises:
        SabunError: naming the file, when the bones put the frame where the mesh is not (see `check_framing`).
    """
    h = heights(posed, avatar)
    bottom, top = frame_span(h, zoom)
    check_framing(posed, avatar, h, zoom, bottom, top)
    half = (top - bottom) / 2
    a, b = _VIEW_DIRECTIONS[view]
    direction = a * posed.frame.forward + b * posed.frame.left
    direction /= np.linalg.norm(direction)
    target = np.array([h.centre[0], bottom + half, h.centre[2]])
    distance = half / math.tan(math.radians(FIELD_OF_VIEW) / 2)
    eye = target + direction * distance
    vertices = posed.vertices()
    radius = float(np.linalg.norm(vertices - target, axis=1).max())
    near = max(distance - radius, distance * 0.05)
    far = distance + radius
    return Camera(
        eye=eye,
        target=target,
        view=look_at(eye, target),
        projection=perspective(FIELD_OF_VIEW, near, far),
        near=near,
        far=far,
    )
