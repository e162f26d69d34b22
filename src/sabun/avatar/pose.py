"""Posing a character by its humanoid bones, and linear blend skinning into world space.

A pose is a set of world-space rotations of arm bones about their joints: each bone is turned so
that it points in a target direction given in the character's own frame (forward = where the face
looks, up = +Y, left = the character's left hand side). That frame is read from the bones
themselves (left bones minus right bones), so VRM 0.x files (facing -Z) and VRM 1.0 files (facing
+Z) and mislabelled exports all pose and frame the same way.

`arms-at-sides` is the method's upright pose: both arms hang straight down, tilted outwards by the
smallest angle that keeps the forearm and hand clear of the hips and thighs (measured on the
skinned mesh, so a wide skirt or wide hips get a wider stance and no arm passes through the body).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from sabun.avatar.types import Avatar, Primitive
from sabun.errors import SabunError

POSES = ("rest", "arms-at-sides", "a-pose", "arms-up", "hands-on-hips")
UP = np.array([0.0, 1.0, 0.0])

# Bones whose side-to-side offset tells the character's left from her right, best first.
_SIDE_PAIRS = (
    ("leftUpperArm", "rightUpperArm"),
    ("leftShoulder", "rightShoulder"),
    ("leftUpperLeg", "rightUpperLeg"),
    ("leftHand", "rightHand"),
    ("leftEye", "rightEye"),
    ("leftFoot", "rightFoot"),
)
_ARM_BONES = ("UpperArm", "LowerArm", "Hand")
_HIP_BONES = ("hips", "leftUpperLeg", "rightUpperLeg", "leftLowerLeg", "rightLowerLeg")
MAX_POSED_VERTICES = 1 << 24
"""The most vertices a posed character may have, counting a mesh once per node that shows it."""
MAX_COORDINATE = 1e6
"""The farthest from the origin a posed vertex may be (metres, glTF's unit; a character is about 1.5 m tall)."""
MIN_HEIGHT = 1e-4
"""The least height (world y extent) a posed character may have: below it there is no figure to frame."""
MIN_AREA_SHARE = 1e-6
"""The least total triangle area, as a share of height squared: about one pixel of a 1024 px full-body shot."""


def quaternion_matrix(q: np.ndarray) -> np.ndarray:
    """(x, y, z, w) -> 3x3 rotation; the quaternion is normalised first (files store unnormalised ones)."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / (np.linalg.norm(q) or 1.0)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest 3x3 rotation taking direction `a` to direction `b` (Rodrigues)."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    axis = np.cross(a, b)
    s, c = np.linalg.norm(axis), float(np.dot(a, b))
    if s < 1e-9:
        if c > 0:
            return np.eye(3)
        # opposite directions: half a turn about any axis perpendicular to a
        perpendicular = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        axis, s, c = perpendicular / np.linalg.norm(perpendicular), 0.0, -1.0
        k = _skew(axis)
        return np.eye(3) + 2 * k @ k
    k = _skew(axis / s)
    return np.eye(3) + s * k + (1 - c) * k @ k


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def local_matrix(avatar: Avatar, index: int) -> np.ndarray:
    """A node's 4x4 local transform as stored (matrix, or T @ R @ S)."""
    node = avatar.nodes[index]
    if node.matrix is not None:
        return np.asarray(node.matrix, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = quaternion_matrix(node.rotation) * np.asarray(node.scale, dtype=np.float64)
    m[:3, 3] = node.translation
    return m


def _order(avatar: Avatar) -> list[int]:
    """Nodes with every parent before its children."""
    order, stack = [], [i for i, n in enumerate(avatar.nodes) if n.parent is None][::-1]
    while stack:
        i = stack.pop()
        order.append(i)
        stack.extend(reversed(avatar.nodes[i].children))
    return order


def world_matrices(avatar: Avatar, local: list[np.ndarray]) -> list[np.ndarray]:
    """World transform of every node from its local transform."""
    world: list[np.ndarray] = [np.eye(4)] * len(avatar.nodes)
    for i in _order(avatar):
        parent = avatar.nodes[i].parent
        world[i] = local[i] if parent is None else world[parent] @ local[i]
    return world


@dataclass
class Frame:
    """The character's own directions in world space."""

    forward: np.ndarray
    """Where the face looks (horizontal unit vector)."""
    left: np.ndarray
    """The character's left (horizontal unit vector)."""
    how: str
    """How `forward` was found, for `--list` and the render metadata."""


def character_frame(avatar: Avatar, world: list[np.ndarray]) -> Frame:
    """Forward and left from the humanoid bones; from the format's convention when there are none."""
    for left_bone, right_bone in _SIDE_PAIRS:
        if left_bone in avatar.humanoid and right_bone in avatar.humanoid:
            side = world[avatar.humanoid[left_bone]][:3, 3] - world[avatar.humanoid[right_bone]][:3, 3]
            side[1] = 0.0
            if np.linalg.norm(side) > 1e-6:
                left = side / np.linalg.norm(side)
                return Frame(forward=np.cross(left, UP), left=left, how=f"humanoid bones {left_bone} / {right_bone}")
    # glTF and VRM 1.0 models face +Z; VRM 0.x models face -Z.
    forward = np.array([0.0, 0.0, -1.0 if avatar.format == "vrm0" else 1.0])
    return Frame(
        forward=forward, left=np.cross(UP, forward), how=f"{avatar.format} convention (no humanoid left/right bones)"
    )


@dataclass
class PosedPrimitive:
    """One primitive in world space, ready to draw."""

    mesh: str
    node: str
    primitive: Primitive
    positions: np.ndarray
    """(N, 3) float32 world positions after morphs and skinning."""
    normals: np.ndarray
    """(N, 3) float32 unit world normals."""
    bones: np.ndarray
    """(N,) int: the node that moves each vertex most (its dominant joint, or the mesh's node)."""


@dataclass
class Posed:
    """A posed character: its primitives in world space, its bones and its frame."""

    primitives: list[PosedPrimitive]
    world: list[np.ndarray]
    frame: Frame
    pose: str
    note: str = ""
    """Why the requested pose could not be applied in full, if it could not."""

    def bone(self, name: str, avatar: Avatar) -> np.ndarray | None:
        index = avatar.humanoid.get(name)
        return None if index is None else self.world[index][:3, 3]

    @functools.cached_property
    def _all_vertices(self) -> np.ndarray:
        return (
            np.concatenate([p.positions for p in self.primitives]) if self.primitives else np.zeros((0, 3), np.float32)
        )

    def vertices(self) -> np.ndarray:
        """Every posed vertex, (V, 3); computed once (framing asks for it on every shot)."""
        return self._all_vertices


def _safe_inverse(m: np.ndarray) -> np.ndarray:
    """inv(m); the pseudo-inverse for a singular m (a node scaled to zero, which hides what hangs below it)."""
    try:
        inverse = np.linalg.inv(m)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(m)
    return inverse if np.isfinite(inverse).all() else np.linalg.pinv(m)


def _vertex_normals(positions: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals for primitives that come without NORMAL."""
    tri = positions[indices]
    face = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.zeros_like(positions)
    for k in range(3):
        np.add.at(normals, indices[:, k], face)
    return normals


def _normalise(v: np.ndarray) -> np.ndarray:
    length = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(length > 1e-12, length, 1.0)).astype(np.float32)


def _shown(avatar: Avatar, hidden: frozenset[str]) -> list[int]:
    """The nodes of the default scene that show a mesh, less the hidden ones, in node order."""
    scene = set(avatar.scene_nodes())
    return [
        i
        for i, node in enumerate(avatar.nodes)
        if i in scene
        and node.mesh is not None
        and avatar.meshes[node.mesh].name not in hidden
        and node.name not in hidden
    ]


def skin(avatar: Avatar, world: list[np.ndarray], hidden: frozenset[str] = frozenset()) -> list[PosedPrimitive]:
    """Every visible primitive (nodes of the default scene) with morphs at their default weights and skinning applied."""
    out = []
    shown = _shown(avatar, hidden)
    count = sum(len(p.positions) for i in shown for p in avatar.meshes[avatar.nodes[i].mesh].primitives)
    if count > MAX_POSED_VERTICES:
        raise SabunError(
            f"{avatar.path}: its nodes show {count} vertices in all (a mesh counts once per node that "
            f"uses it), more than the {MAX_POSED_VERTICES} sabun renders; the file is damaged, or its "
            "meshes should be decimated before rendering"
        )
    for node_index in shown:
        node = avatar.nodes[node_index]
        mesh = avatar.meshes[node.mesh]
        for primitive in mesh.primitives:
            if not len(primitive.indices):
                continue
            positions = primitive.positions.astype(np.float64)
            normals = primitive.normals.astype(np.float64) if primitive.normals is not None else None
            for weight, target in zip(mesh.weights, primitive.targets):
                if weight:
                    positions = positions + weight * target.get("POSITION", 0.0)
                    if normals is not None and "NORMAL" in target:
                        normals = normals + weight * target["NORMAL"]
            if normals is None:
                normals = _vertex_normals(positions, primitive.indices)
            skinned = node.skin is not None and primitive.joints is not None and primitive.weights is not None
            if skinned:
                s = avatar.skins[node.skin]
                joint_matrices = np.stack([world[j] for j in s.joints]) @ s.inverse_bind.astype(np.float64)
                # (N, 4, 4): the weighted sum of each vertex's four joint matrices
                blended = np.einsum(
                    "nk,nkij->nij", primitive.weights.astype(np.float64), joint_matrices[primitive.joints]
                )
                positions = np.einsum("nij,nj->ni", blended[:, :3, :3], positions) + blended[:, :3, 3]
                normals = np.einsum("nij,nj->ni", blended[:, :3, :3], normals)
                dominant = np.asarray(s.joints)[
                    primitive.joints[np.arange(len(positions)), primitive.weights.argmax(1)]
                ]
            else:
                m = world[node_index]
                positions = positions @ m[:3, :3].T + m[:3, 3]
                normals = normals @ _safe_inverse(m[:3, :3])  # inverse transpose, for scaled nodes
                dominant = np.full(len(positions), node_index)
            out.append(
                PosedPrimitive(
                    mesh.name, node.name, primitive, positions.astype(np.float32), _normalise(normals), dominant
                )
            )
    return out


def _turn_bone(avatar: Avatar, local: list[np.ndarray], bone: int, child: int, direction: np.ndarray) -> None:
    """Rotate `bone` about its joint (in world space) so that the bone -> child direction becomes `direction`."""
    world = world_matrices(avatar, local)
    start, end = world[bone][:3, 3], world[child][:3, 3]
    if np.linalg.norm(end - start) < 1e-9 or not np.linalg.norm(direction) > 1e-9:
        return  # a bone of no length (two bones at one point) has no direction to turn
    turn = np.eye(4)
    turn[:3, :3] = rotation_between(end - start, direction)
    about = np.eye(4)
    about[:3, 3] = start
    back = np.eye(4)
    back[:3, 3] = -start
    new_world = about @ turn @ back @ world[bone]
    parent = avatar.nodes[bone].parent
    local[bone] = new_world if parent is None else _safe_inverse(world[parent]) @ new_world


def _arm_chain(avatar: Avatar, side: str) -> tuple[int, int, int] | None:
    bones = [avatar.humanoid.get(f"{side}{b}") for b in _ARM_BONES]
    return None if None in bones else tuple(bones)


def _direction(
    frame: Frame, side: str, down_angle: float, outward_angle: float, forward_angle: float = 0.0
) -> np.ndarray:
    """A unit direction: `down_angle` degrees from straight down towards the side, tipped forwards."""
    out = frame.left if side == "left" else -frame.left
    theta, phi = math.radians(down_angle), math.radians(forward_angle)
    d = -UP * math.cos(theta) + out * math.sin(theta) * math.cos(math.radians(outward_angle))
    return d + frame.forward * math.sin(phi)


def _point_arm(avatar: Avatar, local: list[np.ndarray], chain: tuple[int, int, int], direction: np.ndarray) -> None:
    upper, lower, hand = chain
    _turn_bone(avatar, local, upper, lower, direction)
    _turn_bone(avatar, local, lower, hand, direction)


def _clearance(avatar: Avatar, local: list[np.ndarray], frame: Frame, side: str, hidden: frozenset[str]) -> float:
    """How far (metres, along the character's side axis) the forearm and hand stay outside hips and legs.

    Negative when they overlap: then the arm would pass through the body.
    """
    world = world_matrices(avatar, local)
    posed = skin(avatar, world, hidden)
    if not posed:
        return 0.0
    positions = np.concatenate([p.positions for p in posed])
    bones = np.concatenate([p.bones for p in posed])
    arm = np.isin(
        bones, [avatar.humanoid[f"{side}{b}"] for b in ("LowerArm", "Hand") if f"{side}{b}" in avatar.humanoid]
    )
    body = np.isin(bones, [avatar.humanoid[b] for b in _HIP_BONES if b in avatar.humanoid])
    if not arm.any() or not body.any():
        return 0.0
    centre = world[avatar.humanoid["hips"]][:3, 3] if "hips" in avatar.humanoid else positions.mean(0)
    out = frame.left if side == "left" else -frame.left
    arm_pts, body_pts = positions[arm] - centre, positions[body] - centre
    low, high = arm_pts[:, 1].min(), arm_pts[:, 1].max()
    band = body_pts[(body_pts[:, 1] >= low) & (body_pts[:, 1] <= high)]
    if len(band) == 0:
        return 1.0
    return float((arm_pts @ out).min() - (band @ out).max())


def pose_locals(avatar: Avatar, pose: str, hidden: frozenset[str] = frozenset()) -> tuple[list[np.ndarray], str]:
    """Local transforms of every node in `pose`, and a note when the pose could not be applied."""
    if pose not in POSES:
        raise SabunError(f"pose {pose!r} is not valid; choose one of: {', '.join(POSES)}")
    local = [local_matrix(avatar, i) for i in range(len(avatar.nodes))]
    if pose == "rest":
        return local, ""
    chains = {side: _arm_chain(avatar, side) for side in ("left", "right")}
    if not all(chains.values()):
        return local, "no humanoid arm bones (upper arm, lower arm, hand): rendered in the rest pose as stored"
    frame = character_frame(avatar, world_matrices(avatar, local))
    note = ""
    if not any(avatar.nodes[i].skin is not None for i in range(len(avatar.nodes))):
        note = "the model has no skin: only meshes attached to bone nodes follow the pose"
    for side, chain in chains.items():
        if pose == "a-pose":
            _point_arm(avatar, local, chain, _direction(frame, side, 50.0, 0.0))
        elif pose == "arms-up":
            _point_arm(avatar, local, chain, _direction(frame, side, 160.0, 0.0))
        elif pose == "hands-on-hips":
            _hand_on_hip(avatar, local, chain, frame, side)
        else:
            # the smallest outward tilt from 4 degrees that clears the body by a margin
            margin = 0.01 * _height(avatar, local, hidden)
            for angle in range(4, 41, 2):
                trial = list(local)
                _point_arm(avatar, trial, chain, _direction(frame, side, float(angle), 0.0))
                if _clearance(avatar, trial, frame, side, hidden) >= margin:
                    break
            local = trial
    return local, note


def _height(avatar: Avatar, local: list[np.ndarray], hidden: frozenset[str]) -> float:
    posed = skin(avatar, world_matrices(avatar, local), hidden)
    if not posed:
        return 1.0
    y = np.concatenate([p.positions[:, 1] for p in posed])
    return float(y.max() - y.min()) or 1.0


def _hand_on_hip(avatar: Avatar, local: list[np.ndarray], chain: tuple[int, int, int], frame: Frame, side: str) -> None:
    """Two-bone inverse kinematics: the wrist on the side of the hips, the elbow out to the side."""
    upper, lower, hand = chain
    world = world_matrices(avatar, local)
    shoulder, elbow, wrist = (world[i][:3, 3] for i in chain)
    a, b = np.linalg.norm(elbow - shoulder), np.linalg.norm(wrist - elbow)
    if a < 1e-9 or b < 1e-9:
        return  # an arm bone of no length (bones mapped to one point): nothing to bend
    out = frame.left if side == "left" else -frame.left
    hips = world[avatar.humanoid["hips"]][:3, 3] if "hips" in avatar.humanoid else shoulder - UP * (a + b)
    target = hips + out * 0.6 * abs(np.dot(shoulder - hips, out)) + UP * 0.05 * (a + b)
    reach = target - shoulder
    distance = min(np.linalg.norm(reach), 0.999 * (a + b))
    if distance < 1e-9:
        return  # the hip is at the shoulder: no reach to aim along
    reach = reach / np.linalg.norm(reach)
    # elbow: law of cosines, bent away from the body
    cos_shoulder = np.clip((a * a + distance * distance - b * b) / (2 * a * distance), -1.0, 1.0)
    pole = out - np.dot(out, reach) * reach
    if np.linalg.norm(pole) < 1e-9:  # reaching straight sideways: bend the elbow backwards instead
        pole = -frame.forward - np.dot(-frame.forward, reach) * reach
    pole /= np.linalg.norm(pole)
    elbow_target = shoulder + a * (cos_shoulder * reach + math.sqrt(1 - cos_shoulder**2) * pole)
    _turn_bone(avatar, local, upper, lower, elbow_target - shoulder)
    _turn_bone(avatar, local, lower, hand, shoulder + reach * distance - elbow_target)


def pose_avatar(avatar: Avatar, pose: str = "arms-at-sides", hidden: frozenset[str] = frozenset()) -> Posed:
    """The character in `pose`, skinned into world space, with `hidden` meshes (mesh or node names) left out.

    Raises:
        SabunError: naming the file, for a model that loads but cannot be framed or drawn: transforms
            that overflow, vertices at infinity or absurdly far away, all vertices at one point or at one
            height, triangles of no area, nothing left to draw.
    """
    if pose not in POSES:
        raise SabunError(f"pose {pose!r} is not valid; choose one of: {', '.join(POSES)}")
    if not _shown(avatar, hidden):
        raise SabunError(
            f"{avatar.path}: nothing left to render; every mesh is hidden"
            if hidden
            else f"{avatar.path}: no node of its scene shows a mesh; export the model with its meshes in the scene"
        )
    # Overflow in a damaged file's transforms is checked for below, as an error naming the file;
    # numpy's warnings about it would only add lines before that error.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        _check_world(avatar, world_matrices(avatar, [local_matrix(avatar, i) for i in range(len(avatar.nodes))]))
        local, note = pose_locals(avatar, pose, hidden)
        world = world_matrices(avatar, local)
        _check_world(avatar, world)
        primitives = skin(avatar, world, hidden)
        if not primitives:
            raise SabunError(
                f"{avatar.path}: nothing left to render; every mesh is hidden"
                if hidden
                else f"{avatar.path}: its meshes have no triangles to draw; export the model with its meshes"
            )
        posed = Posed(primitives=primitives, world=world, frame=character_frame(avatar, world), pose=pose, note=note)
        check_drawable(posed, avatar, hidden)
    return posed


def _check_world(avatar: Avatar, world: list[np.ndarray]) -> None:
    for i, matrix in enumerate(world):
        if not np.isfinite(matrix).all():
            raise SabunError(
                f"{avatar.path}: node {i} '{avatar.nodes[i].name}' has an infinite or NaN world transform (the scales, "
                "matrices and translations from the root down to it multiply past what a float holds); fix the node "
                "transforms and export again"
            )


def check_drawable(posed: Posed, avatar: Avatar, hidden: frozenset[str] = frozenset()) -> None:
    """Refuse a posed model that no shot can frame or draw, with an error naming the file."""
    where = " (with the hidden meshes left out)" if hidden else ""
    fix = (
        "check the model's scale (glTF is in metres: a character is about 1.5 tall), its up axis (+Y), its skin and "
        "its morph targets, and export it again"
    )
    for p in posed.primitives:
        if not np.isfinite(p.positions).all():
            raise SabunError(
                f"{avatar.path}: mesh '{p.mesh}' has vertices at infinity or NaN once its morph targets "
                f"and skin are applied (a node scale, morph weight or joint matrix far too large); {fix}"
            )
    vertices = posed.vertices()
    reach = float(np.abs(vertices).max())
    if reach > MAX_COORDINATE:
        raise SabunError(
            f"{avatar.path}: its vertices reach {reach:.3g} from the origin, beyond the {MAX_COORDINATE:g} "
            f"sabun renders (a node scale or translation far too large){where}; {fix}"
        )
    low, high = vertices.min(0).astype(np.float64), vertices.max(0).astype(np.float64)
    height = float(high[1] - low[1])
    if height <= max(MIN_HEIGHT, 1e-5 * reach):
        if float((high - low).max()) <= max(MIN_HEIGHT, 1e-5 * reach):
            shape = f"all its vertices are at one point ({', '.join(f'{v:.3g}' for v in low)})"
        else:
            shape = f"it is flat: every vertex is at height y = {low[1]:.3g}"
        raise SabunError(
            f"{avatar.path}: {shape}{where}, so there is no figure to frame (sabun frames a character "
            f"standing along +Y by its height); {fix}"
        )
    area = 0.0
    for p in posed.primitives:
        corners = p.positions.astype(np.float64)[p.primitive.indices]
        area += 0.5 * float(
            np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1).sum()
        )
    if area <= MIN_AREA_SHARE * height * height:
        triangles = sum(len(p.primitive.indices) for p in posed.primitives)
        shape = (
            f"none of its {triangles} triangles has any area (their corners lie on a line or at one point)"
            if area == 0
            else f"its {triangles} triangles have a total area of only {area:.3g} square units, under a pixel "
            f"of any shot of a figure {height:.3g} tall"
        )
        raise SabunError(f"{avatar.path}: {shape}{where}, so nothing would be drawn; {fix}")
