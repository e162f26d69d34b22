"""The toy character's 3D shape: ellipsoids and swept-sphere capsules in character space.

Units: the head is 1 tall and the character about 6, standing on y = 0; x points to the
character's left, y up, z out of the face. Each primitive names the body part it belongs to, and
`render.py` turns parts into materials (skin, hair, outfit...), so one geometry serves both styles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sabun.toyworld.character import CharacterSpec

Vec3 = tuple[float, float, float]

POSES = ("arms-at-sides", "arms-up", "hands-on-hips", "arms-behind-back")

HEAD_CENTRE: Vec3 = (0.0, 5.45, 0.0)
HEAD_RADII: Vec3 = (0.42, 0.5, 0.44)
SHOULDER_Y = 4.58
UPPER_ARM = 0.78
FOREARM = 0.7


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid."""

    centre: Vec3
    """Centre in character space."""
    radii: Vec3
    """Semi-axes along x, y, z."""
    part: str
    """Body part, mapped to a material by the renderer."""


@dataclass(frozen=True)
class Capsule:
    """A sphere swept from `a` to `b`, its radius going linearly from `ra` to `rb` (a tapered limb)."""

    a: Vec3
    """Start point."""
    b: Vec3
    """End point."""
    ra: float
    """Radius at `a`."""
    rb: float
    """Radius at `b`."""
    part: str
    """Body part, mapped to a material by the renderer."""


Primitive = Ellipsoid | Capsule


@dataclass(frozen=True)
class Build:
    """Widths that make a body type visible (character units)."""

    shoulder: float
    """Half the distance between the shoulder joints."""
    chest: float
    """Half-width of the chest."""
    breast: float
    """Radius of each breast."""
    waist: float
    """Half-width of the waist."""
    hips: float
    """Half-width of the hips."""
    thigh: float
    """Radius of the thigh at the hip."""
    calf: float
    """Radius of the leg at the knee."""
    arm: float
    """Radius of the upper arm at the shoulder."""


BUILDS: dict[str, Build] = {
    "slim": Build(shoulder=0.42, chest=0.31, breast=0.08, waist=0.2, hips=0.3, thigh=0.15, calf=0.1, arm=0.068),
    "average": Build(shoulder=0.47, chest=0.37, breast=0.125, waist=0.26, hips=0.41, thigh=0.19, calf=0.115, arm=0.08),
    "curvy": Build(shoulder=0.49, chest=0.4, breast=0.18, waist=0.27, hips=0.54, thigh=0.24, calf=0.13, arm=0.09),
}


def _add(p: Vec3, q: Vec3) -> Vec3:
    """Sum of two points."""
    return (p[0] + q[0], p[1] + q[1], p[2] + q[2])


def _mirror(p: Vec3) -> Vec3:
    """`p` mirrored across x = 0."""
    return (-p[0], p[1], p[2])


def _symmetric(prims: list[Primitive]) -> list[Primitive]:
    """The primitives and their mirror images across x = 0 (the character's right side)."""
    mirrored: list[Primitive] = []
    for p in prims:
        if isinstance(p, Ellipsoid):
            mirrored.append(Ellipsoid(_mirror(p.centre), p.radii, p.part))
        else:
            mirrored.append(Capsule(_mirror(p.a), _mirror(p.b), p.ra, p.rb, p.part))
    return prims + mirrored


def _head_surface_z(x: float, y: float) -> float:
    """Depth of the front of the head at (x, y): where facial features sit."""
    cx, cy, cz = HEAD_CENTRE
    rx, ry, rz = HEAD_RADII
    s = 1 - ((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2
    return cz + rz * float(np.sqrt(max(s, 0.0)))


def _face() -> list[Primitive]:
    """Eyes (iris, pupil, highlight, upper lash) and mouth on the front of the head."""
    cx, cy, _ = HEAD_CENTRE
    x, y = cx + 0.165, cy - 0.05
    z = _head_surface_z(x, y)
    eye: list[Primitive] = [
        Ellipsoid((x, y, z - 0.012), (0.072, 0.1, 0.03), "iris"),
        Ellipsoid((x, y - 0.012, z - 0.004), (0.034, 0.052, 0.03), "pupil"),
        Ellipsoid((x - 0.026, y + 0.035, z + 0.012), (0.022, 0.022, 0.02), "eye_highlight"),
        Capsule((x - 0.09, y + 0.085, z - 0.01), (x + 0.085, y + 0.105, z - 0.02), 0.022, 0.018, "lash"),
    ]
    mouth_z = _head_surface_z(cx, cy - 0.3)
    mouth = Capsule(
        (cx - 0.045, cy - 0.3, mouth_z - 0.005), (cx + 0.045, cy - 0.3, mouth_z - 0.005), 0.014, 0.014, "mouth"
    )
    return _symmetric(eye) + [mouth]


def _body(build: Build, outfit: str) -> list[Primitive]:
    """Head, neck, torso and legs (arms depend on the pose)."""
    b = build
    # Thighs nearly touch and the legs narrow to the ankles: at 64 px thin, apart legs would be
    # little more than their outlines.
    hip_x = b.hips * 0.44
    leg = [
        Capsule((hip_x, 3.15, 0.0), (hip_x * 0.72, 1.72, 0.03), b.thigh, b.calf, "thigh"),
        Capsule((hip_x * 0.72, 1.72, 0.03), (hip_x * 0.56, 0.22, -0.02), b.calf, b.calf * 0.6, "shin"),
        Capsule((hip_x * 0.56, 0.12, -0.03), (hip_x * 0.6, 0.07, 0.26), 0.075, 0.065, "foot"),
    ]
    breast_z = 0.11 + b.breast * 0.35
    torso: list[Primitive] = [
        Ellipsoid(HEAD_CENTRE, HEAD_RADII, "head"),
        Capsule((0.0, 4.55, -0.03), (0.0, 5.05, -0.03), 0.11, 0.1, "neck"),
        Capsule((-b.shoulder + 0.04, SHOULDER_Y, -0.01), (b.shoulder - 0.04, SHOULDER_Y, -0.01), 0.1, 0.1, "torso"),
        Ellipsoid((0.0, 4.22, 0.0), (b.chest, 0.5, 0.23), "torso"),
        Ellipsoid((0.15, 4.2, breast_z), (b.breast, b.breast, b.breast), "breast"),
        Ellipsoid((-0.15, 4.2, breast_z), (b.breast, b.breast, b.breast), "breast"),
        Ellipsoid((0.0, 3.7, 0.0), (b.waist, 0.42, 0.18), "waist"),
        Ellipsoid((0.0, 3.27, -0.01), (b.hips, 0.38, 0.24), "hips"),
    ]
    if outfit == "dress":
        torso.append(Capsule((0.0, 3.62, 0.0), (0.0, 2.72, 0.0), b.waist + 0.05, b.hips + 0.2, "skirt"))
    return torso + _symmetric(leg)


def _arm_joints(build: Build, pose: str) -> tuple[Vec3, Vec3, Vec3]:
    """Shoulder, elbow and wrist of the left arm (x > 0) for a pose."""
    shoulder = (build.shoulder, SHOULDER_Y, 0.0)
    if pose == "arms-at-sides":
        elbow = _add(shoulder, _scaled((0.2, -1.0, -0.03), UPPER_ARM))
        wrist = _add(elbow, _scaled((0.1, -1.0, 0.12), FOREARM))
    elif pose == "arms-up":
        # raised a little backwards, so that from the side the near arm does not hide the face
        elbow = _add(shoulder, _scaled((0.6, 0.8, -0.2), UPPER_ARM))
        wrist = _add(elbow, _scaled((0.05, 1.0, -0.3), FOREARM))
    elif pose == "hands-on-hips":
        elbow = _add(shoulder, _scaled((0.75, -0.85, -0.15), UPPER_ARM))
        wrist = (build.hips + 0.02, 3.42, 0.03)
    elif pose == "arms-behind-back":
        elbow = _add(shoulder, _scaled((0.18, -1.0, -0.35), UPPER_ARM))
        wrist = (0.12, 3.42, -0.36)
    else:
        raise ValueError(f"unknown pose {pose!r}")
    return shoulder, elbow, wrist


def _scaled(direction: Vec3, length: float) -> Vec3:
    """`direction` rescaled to `length`."""
    d = np.asarray(direction, dtype=float)
    d = d / np.linalg.norm(d) * length
    return (float(d[0]), float(d[1]), float(d[2]))


def _arms(build: Build, pose: str) -> list[Primitive]:
    """Both arms, each an upper arm, a forearm and a hand."""
    shoulder, elbow, wrist = _arm_joints(build, pose)
    direction = np.subtract(wrist, elbow)
    fingertips = _add(wrist, _scaled(tuple(direction), 0.13))
    arm = [
        Capsule(shoulder, elbow, build.arm, build.arm * 0.82, "upper_arm"),
        Capsule(elbow, wrist, build.arm * 0.82, build.arm * 0.62, "forearm"),
        Capsule(wrist, fingertips, 0.058, 0.048, "hand"),
    ]
    return _symmetric(arm)


def _bow(centre: Vec3) -> list[Primitive]:
    """A ribbon bow: knot, two loops along x and two short tails."""
    x, y, z = centre
    return [
        Ellipsoid(centre, (0.05, 0.05, 0.05), "ribbon"),
        Ellipsoid((x - 0.11, y + 0.025, z), (0.1, 0.08, 0.07), "ribbon"),
        Ellipsoid((x + 0.11, y + 0.025, z), (0.1, 0.08, 0.07), "ribbon"),
        Capsule(centre, (x - 0.06, y - 0.19, z + 0.02), 0.035, 0.022, "ribbon"),
        Capsule(centre, (x + 0.06, y - 0.19, z + 0.02), 0.035, 0.022, "ribbon"),
    ]


def _chain(points: list[Vec3], radii: list[float], part: str) -> list[Primitive]:
    """Capsules through consecutive points: a bent lock of hair."""
    return [Capsule(points[i], points[i + 1], radii[i], radii[i + 1], part) for i in range(len(points) - 1)]


def _hair(hairstyle: str, ribbon: bool) -> list[Primitive]:
    """Hair cap, fringe and the hairstyle's own locks; bows where the ribbon is tied."""
    cx, cy, cz = HEAD_CENTRE
    rx, ry, rz = HEAD_RADII
    # The cap is the head scaled up and pushed back: it covers the crown, sides and back and leaves
    # the face uncovered below a hairline, without any clipping.
    hair: list[Primitive] = [Ellipsoid((cx, cy + 0.06, cz - 0.09), (rx * 1.08, ry * 1.07, rz * 1.06), "hair")]
    # Fringe: locks from inside the cap down over the forehead, the middle one shortest.
    for x, drop in ((0.0, -0.02), (0.15, 0.03), (0.28, 0.1)):
        tip = (x * 1.05, cy + 0.14 - drop, _head_surface_z(x * 1.05, cy + 0.14 - drop) + 0.03)
        lock = Capsule((x * 0.8, cy + 0.38, 0.18), tip, 0.11, 0.04, "hair")
        hair += _symmetric([lock]) if x else [lock]
    bows: list[Vec3] = []
    if hairstyle == "short":
        hair += [Ellipsoid((0.0, cy - 0.25, cz - 0.2), (0.38, 0.28, 0.3), "hair")]
        hair += _symmetric([Capsule((0.4, cy + 0.1, 0.1), (0.4, cy - 0.3, 0.13), 0.08, 0.045, "hair")])
        bows = [(0.4, cy + 0.42, 0.0)]
    elif hairstyle == "medium":
        hair += [Ellipsoid((0.0, cy - 0.4, cz - 0.17), (0.47, 0.52, 0.27), "hair")]
        hair += _symmetric(
            _chain(
                [(0.38, cy + 0.15, 0.12), (0.43, cy - 0.3, 0.14), (0.46, cy - 0.78, 0.1)], [0.1, 0.09, 0.055], "hair"
            )
        )
        bows = [(0.4, cy + 0.42, 0.0)]
    elif hairstyle == "long":
        hair += [Capsule((0.0, cy - 0.2, cz - 0.22), (0.0, 3.55, cz - 0.36), 0.46, 0.34, "hair")]
        hair += _symmetric(
            _chain([(0.38, cy + 0.15, 0.12), (0.45, cy - 0.5, 0.16), (0.47, 4.05, 0.24)], [0.1, 0.1, 0.05], "hair")
        )
        bows = [(0.4, cy + 0.42, 0.0)]
    elif hairstyle == "ponytail":
        tie = (0.0, cy + 0.28, cz - 0.5)
        hair += [Ellipsoid(tie, (0.09, 0.09, 0.09), "hair")]
        hair += _chain(
            [tie, (0.03, cy + 0.05, cz - 0.66), (0.08, cy - 0.7, cz - 0.6), (0.1, 3.95, cz - 0.45)],
            [0.12, 0.2, 0.16, 0.05],
            "hair",
        )
        bows = [(0.0, cy + 0.3, cz - 0.56)]
    elif hairstyle == "twintails":
        tie = (0.45, cy + 0.28, -0.1)
        hair += _symmetric([Ellipsoid(tie, (0.08, 0.08, 0.08), "hair")])
        hair += _symmetric(
            _chain(
                [tie, (0.66, cy - 0.1, -0.14), (0.7, cy - 1.0, -0.12), (0.6, 3.5, -0.1)],
                [0.12, 0.19, 0.15, 0.05],
                "hair",
            )
        )
        bows = [(0.47, cy + 0.33, -0.04), (-0.47, cy + 0.33, -0.04)]
    else:
        raise ValueError(f"unknown hairstyle {hairstyle!r}")
    if ribbon:
        for centre in bows:
            hair += _bow(centre)
    return hair


def character_primitives(spec: CharacterSpec, pose: str) -> list[Primitive]:
    """All primitives of `spec` standing in `pose`, in character space."""
    build = BUILDS[spec.body]
    return _body(build, spec.outfit) + _arms(build, pose) + _face() + _hair(spec.hairstyle, spec.ribbon)
