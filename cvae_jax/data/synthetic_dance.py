"""Procedural stand-in for the Lab4 dance footage, written in the reference folder layout.

The real data (one dancer in a grey studio, with OpenPose skeleton images) cannot
ship with the project, so tests, smoke runs and benchmarks train on this instead.
It imitates what matters to a pose-conditioned video model: a static, softly lit
background; a small dark-clothed figure about 3/4 of the frame tall whose limbs
follow a 2D skeleton; smooth dance-like motion (steps across the floor, arm
swings, crouches, lunges, turns, occasional walks towards the camera); and a
pose image drawn from exactly the skeleton that drew the dancer.

Everything is rendered at 2x the written size and box-downsampled, and written
above the model resolution, so the loader's antialiased resize path is exercised
as it is on the real 1024x512 frames.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
import pathlib

import numpy as np
from PIL import Image, ImageDraw

from cvae_jax.data.generated import GeneratedDataset, check_spec_fields, write_jobs

__all__ = ["SyntheticDanceSpec", "generate", "ensure_synthetic", "DATASET", "COMPLETE_MARKER"]

# Bump whenever the rendered output changes so cached datasets are regenerated.
GENERATOR_VERSION = 1
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_SUPERSAMPLE = 2
# Even with workers requested, stay serial below this many frames: spawning costs more.
_PARALLEL_MIN_FRAMES = 1500
_NOISE_STD = 0.8  # grey levels at the written size


@dataclasses.dataclass(frozen=True)
class SyntheticDanceSpec:
    seed: int = 0
    train_videos: int = 8
    val_videos: int = 1
    test_videos: int = 2
    frames_per_video: int = 630
    width: int = 128
    height: int = 64

    def __post_init__(self):
        check_spec_fields(self, {"seed": 0, "train_videos": 1, "val_videos": 0, "test_videos": 0,
                                 "frames_per_video": 1})
        if self.width < 16 or self.height < 8:
            raise ValueError(f"SyntheticDanceSpec size {self.width}x{self.height} is too small to draw a dancer")

    def digest(self) -> str:
        return DATASET.digest(self)


DATASET = GeneratedDataset("synthetic_dance", SyntheticDanceSpec, GENERATOR_VERSION, ("train", "val", "test"))
COMPLETE_MARKER = DATASET.marker_file


# =========================================================================== appearance


@dataclasses.dataclass(frozen=True)
class _Look:
    """Per-video body proportions, clothing and studio lighting."""

    height: float  # standing height as a fraction of the frame height
    shoulder: float  # the following are fractions of the standing height
    hip: float
    torso: float
    neck: float
    thigh: float
    shin: float
    upper_arm: float
    forearm: float
    head_rx: float
    head_ry: float
    limb_width: float
    leg_width: float
    shirt: tuple
    trousers: tuple
    skin: tuple
    hair: tuple
    shoes: tuple
    studio: dict


def _hsv(h, s, v) -> tuple:
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def _sample_look(rng: np.random.Generator) -> _Look:
    def j(scale: float) -> float:  # proportion jitter
        return 1.0 + scale * rng.uniform(-1.0, 1.0)

    shirt_hue = rng.uniform(0.55, 0.64) if rng.random() < 0.4 else rng.random()
    skin_v = rng.uniform(0.3, 0.6)
    return _Look(
        height=0.75 * j(0.05),
        shoulder=0.12 * j(0.1),
        hip=0.065 * j(0.1),
        torso=0.30 * j(0.05),
        neck=0.075 * j(0.1),
        thigh=0.245 * j(0.05),
        shin=0.235 * j(0.05),
        upper_arm=0.165 * j(0.06),
        forearm=0.145 * j(0.06),
        head_rx=0.052 * j(0.08),
        head_ry=0.066 * j(0.06),
        limb_width=0.055 * j(0.12),
        leg_width=0.085 * j(0.12),
        shirt=_hsv(shirt_hue, rng.uniform(0.12, 0.42), rng.uniform(0.24, 0.46)),
        trousers=_hsv(rng.uniform(0.55, 0.7), rng.uniform(0.1, 0.4), rng.uniform(0.06, 0.15)),
        skin=_hsv(rng.uniform(0.0, 0.07), rng.uniform(0.35, 0.55), skin_v),
        hair=_hsv(rng.uniform(0.0, 0.1), rng.uniform(0.1, 0.4), rng.uniform(0.06, 0.16)),
        shoes=_hsv(0.0, 0.0, rng.uniform(0.03, 0.1)),
        studio={
            "gain": rng.uniform(0.96, 1.03),
            "light_shift": rng.uniform(-0.025, 0.025, size=3).tolist(),
            "light_gain": rng.uniform(0.88, 1.1, size=3).tolist(),
            "tint": rng.uniform(0.5, 1.5),
        },
    )


# Least-squares fit (RMSE ~5 grey levels) of the per-pixel median of the real
# frames: a smooth quadratic wall/floor plus three ceiling-light glows at the top.
_STUDIO_POLY = (33.5, 253.7, -137.8, 113.0, -3.0, -81.3)  # 1, y, y^2, x, xy, x^2
_STUDIO_GLOW = (0.278, 50.4)  # vertical extent, uniform glow
_STUDIO_LIGHTS = ((0.041, 0.109, 82.8), (0.434, 0.089, 76.9), (0.895, 0.164, 95.0))  # centre, width, gain


def _studio(width: int, height: int, studio: dict) -> np.ndarray:
    """Grey studio: three ceiling lights glowing down the wall, darker left, lighter floor."""
    y = (np.arange(height) + 0.5)[:, None] / height
    x = (np.arange(width) + 0.5)[None, :] / width
    c, cy, cyy, cx, cxy, cxx = _STUDIO_POLY
    base = c + cy * y + cyy * y**2 + cx * x + cxy * x * y + cxx * x**2
    extent, uniform = _STUDIO_GLOW
    glow = np.exp(-((y / extent) ** 2))
    lights = uniform + sum(
        gain * g * np.exp(-(((x - (centre + dc)) / width_) ** 2))
        for (centre, width_, gain), dc, g in zip(_STUDIO_LIGHTS, studio["light_shift"], studio["light_gain"])
    )
    grey = (base + glow * lights) * studio["gain"]
    tint = studio["tint"]
    rgb = np.stack([grey + 1.5 * tint, grey + 0.2 * tint, grey - 1.8 * tint], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


# =========================================================================== motion


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing with edge padding, so segment changes blend instead of jumping."""
    if sigma <= 0:
        return x
    radius = int(3 * sigma) + 1
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(x, (radius, radius), mode="edge")
    return np.convolve(padded, k, mode="valid")


_MOVES = ("groove", "travel", "lunge", "crouch", "arms_up", "approach", "turn")
_MOVE_P = np.array([0.27, 0.3, 0.12, 0.09, 0.1, 0.04, 0.08])
_TRACKS = ("x", "depth", "facing", "crouch", "lunge", "stance", "raise_r", "raise_l",
           "plane_r", "plane_l", "elbow_r", "elbow_l", "swing", "lean", "walk")


def _groove(rng: np.random.Generator) -> dict:
    """Dancing on the spot, mostly facing the camera: the default every move starts from."""
    return {
        "facing": rng.normal(0.0, 0.35) if rng.random() < 0.85 else math.pi * rng.choice([-1, 1]),
        "depth": rng.uniform(0.9, 1.12),
        "crouch": rng.uniform(0.0, 0.12),
        "lunge": 0.0,
        "stance": rng.uniform(0.0, 0.1),
        "raise_r": rng.uniform(0.05, 0.6),
        "raise_l": rng.uniform(0.05, 0.6),
        "plane_r": rng.uniform(0.0, 0.9),
        "plane_l": rng.uniform(0.0, 0.9),
        "elbow_r": rng.uniform(0.05, 1.0),
        "elbow_l": rng.uniform(0.05, 1.0),
        "swing": rng.uniform(0.2, 0.8),
        "lean": rng.normal(0.0, 0.06),
        "walk": 0.0,
    }


def _move_pose(rng: np.random.Generator, move: str, facing: float) -> dict:
    """Targets that set ``move`` apart from grooving (travel is handled by :func:`_walk`)."""
    if move == "lunge":
        side = rng.choice([-1.0, 1.0])
        return {"lunge": side * rng.uniform(0.22, 0.36), "crouch": rng.uniform(0.45, 0.8),
                "raise_r": rng.uniform(0.8, 1.7), "raise_l": rng.uniform(0.8, 1.7), "swing": 0.1,
                "facing": rng.normal(0.0, 0.5) if rng.random() < 0.6 else side * rng.uniform(1.0, 1.5)}
    if move == "crouch":
        return {"crouch": rng.uniform(0.6, 1.0), "stance": rng.uniform(0.05, 0.15),
                "raise_r": rng.uniform(0.3, 1.3), "raise_l": rng.uniform(0.3, 1.3), "swing": 0.2}
    if move == "arms_up":  # tall poses reach out of the top of the frame, as in the real video
        return {"raise_r": rng.uniform(2.5, 3.1), "raise_l": rng.uniform(2.5, 3.1),
                "elbow_r": rng.uniform(0.0, 0.4), "elbow_l": rng.uniform(0.0, 0.4),
                "plane_r": rng.uniform(0.0, 0.3), "plane_l": rng.uniform(0.0, 0.3), "swing": 0.25}
    if move == "approach":  # walks up to the camera; the depth track brings it back
        return {"depth": rng.uniform(1.5, 2.4), "facing": rng.normal(0.0, 0.2), "swing": 0.1}
    if move == "turn":
        return {"facing": facing + rng.choice([-1, 1]) * rng.uniform(1.5, 3.0)}
    return {}


def _walk(rng: np.random.Generator, x: float, n_left: int) -> tuple[np.ndarray, dict]:
    """Positions of a walk to a new spot at least 0.2 frame widths away, and its targets."""
    target = rng.uniform(0.06, 0.94)
    if abs(target - x) < 0.2:
        target = min(0.94, x + 0.3) if x < 0.5 else max(0.06, x - 0.3)
    # walking pace of the real footage: about half a frame width in 80-170 frames
    dur = max(2, int(abs(target - x) / rng.uniform(0.003, 0.006)))
    steps = np.arange(1, min(dur, n_left) + 1)
    pose = {"facing": math.copysign(rng.uniform(1.1, 1.6), target - x), "swing": 0.0, "raise_r": 0.1,
            "raise_l": 0.1, "plane_r": 1.5, "plane_l": 1.5, "stance": 0.0, "walk": 1.0}
    return x + (target - x) * steps / dur, pose


def _choreography(rng: np.random.Generator, n: int) -> dict:
    """Per-frame control tracks built from a random sequence of dance moves."""
    tr = {k: np.zeros(n) for k in _TRACKS}
    x, facing, t, moves = rng.uniform(0.3, 0.7), 0.0, 0, 0
    while t < n:
        # the second move is always a walk, so every video crosses the floor at least once
        move = "travel" if moves == 1 else str(rng.choice(_MOVES, p=_MOVE_P))
        moves += 1
        values = _groove(rng)
        if move == "travel":
            xs, pose = _walk(rng, x, n - t)
        else:
            xs, pose = np.full(min(int(rng.integers(35, 110)), n - t), x), _move_pose(rng, move, facing)
        values.update(pose)
        if move != "turn":  # turn the short way round to the new heading
            values["facing"] = facing + (values["facing"] - facing + math.pi) % (2 * math.pi) - math.pi
        seg = slice(t, t + len(xs))
        tr["x"][seg] = xs
        for k, v in values.items():
            tr[k][seg] = v
        if move == "approach":
            tr["depth"][seg] = 1.0 + (values["depth"] - 1.0) * np.sin(np.linspace(0, math.pi, len(xs)))
        x, facing, t = float(xs[-1]), values["facing"], seg.stop
    return _shape_tracks(rng, tr, n)


def _shape_tracks(rng: np.random.Generator, tr: dict, n: int) -> dict:
    """Smooth the piecewise tracks and add rhythmic swings and bounces."""
    t = np.arange(n)
    out = {k: _smooth(v, 9.0) for k, v in tr.items()}
    out["x"] = _smooth(tr["x"], 6.0)
    out["depth"] = _smooth(tr["depth"], 12.0)
    out["facing"] = _smooth(tr["facing"], 10.0)
    beat = rng.uniform(14.0, 24.0)  # frames per beat
    phase = rng.uniform(0, 2 * math.pi, size=4)
    swing = out["swing"]
    out["raise_r"] = out["raise_r"] + swing * 0.6 * np.sin(2 * math.pi * t / (2 * beat) + phase[0])
    out["raise_l"] = out["raise_l"] + swing * 0.6 * np.sin(2 * math.pi * t / (2 * beat) + phase[1])
    out["elbow_r"] = np.clip(out["elbow_r"] + swing * 0.35 * np.sin(2 * math.pi * t / beat + phase[2]), 0, 2.2)
    out["elbow_l"] = np.clip(out["elbow_l"] + swing * 0.35 * np.sin(2 * math.pi * t / beat + phase[3]), 0, 2.2)
    out["crouch"] = np.clip(out["crouch"] + swing * 0.08 * (1 + np.sin(2 * math.pi * t / beat)), 0, 1)
    out["lean"] = out["lean"] + 0.04 * swing * np.sin(2 * math.pi * t / (2 * beat) + phase[0])
    out["x"] = out["x"] + 0.01 * swing * np.sin(2 * math.pi * t / (4 * beat) + phase[1])
    return out


def _gait(x_px: np.ndarray, depth: np.ndarray, stride_px: float):
    """Walking phase driven by distance covered, so feet stay planted while the body moves."""
    travel = np.abs(np.diff(x_px, prepend=x_px[0])) + 0.5 * stride_px * np.abs(np.diff(depth, prepend=depth[0]))
    phase = np.cumsum(travel) / (2.0 * stride_px)
    speed = _smooth(np.clip(travel / (0.04 * stride_px), 0, 1), 3.0)
    # continuous: walking towards the camera (no sideways travel) puts the feet side by side
    direction = np.tanh(_smooth(np.diff(x_px, prepend=x_px[0]), 5.0) / (0.02 * stride_px))
    return phase, speed, direction


# =========================================================================== skeleton

# COCO-18 keypoints, as produced by OpenPose.
NOSE, NECK, R_SHOULDER, R_ELBOW, R_WRIST, L_SHOULDER, L_ELBOW, L_WRIST = range(8)
R_HIP, R_KNEE, R_ANKLE, L_HIP, L_KNEE, L_ANKLE, R_EYE, L_EYE, R_EAR, L_EAR = range(8, 18)
# OpenPose body limbs and their colours (the CMU palette, in limb order).
OPENPOSE_LIMBS = (
    (NECK, R_SHOULDER), (NECK, L_SHOULDER), (R_SHOULDER, R_ELBOW), (R_ELBOW, R_WRIST),
    (L_SHOULDER, L_ELBOW), (L_ELBOW, L_WRIST), (NECK, R_HIP), (R_HIP, R_KNEE), (R_KNEE, R_ANKLE),
    (NECK, L_HIP), (L_HIP, L_KNEE), (L_KNEE, L_ANKLE), (NECK, NOSE), (NOSE, R_EYE), (R_EYE, R_EAR),
    (NOSE, L_EYE), (L_EYE, L_EAR),
)
OPENPOSE_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
_SIDES = {"r": -1.0, "l": 1.0}  # image-x side of the body when facing the camera


@dataclasses.dataclass
class _Pose:
    """One frame's skeleton in output pixels plus what the renderer needs besides joints."""

    joints: np.ndarray  # (18, 2) COCO-18 keypoints (x, y)
    visible: np.ndarray  # (18,) bool: keypoints OpenPose would report
    facing: float
    hands: dict
    toes: dict
    head: tuple  # ellipse (cx, cy, rx, ry)
    unit: float  # standing height in pixels


def _rot(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _knee(hip: np.ndarray, ankle: np.ndarray, thigh: float, shin: float, bend: float) -> np.ndarray:
    """Two-bone IK; ``bend`` in [-1, 1] is the knee's image-x direction (0: bends towards the camera)."""
    d_vec = ankle - hip
    d = max(float(np.hypot(*d_vec)), 1e-6)
    d = min(d, thigh + shin - 1e-6)
    u = d_vec / max(float(np.hypot(*d_vec)), 1e-6)
    m = (thigh**2 - shin**2 + d**2) / (2 * d)
    h = math.sqrt(max(thigh**2 - m**2, 0.0))
    n = np.array([abs(u[1]), -u[0] * np.sign(u[1] if u[1] != 0 else 1.0)])
    return hip + u * m + n * h * bend


def _arm_dir(raise_angle: float, plane: float, side: float, facing: float) -> np.ndarray:
    """Image projection of a unit arm direction: raised sideways (plane 0) or forwards (plane pi/2)."""
    outward = side * math.cos(facing)
    forward = math.sin(facing)
    horizontal = math.sin(raise_angle) * (math.cos(plane) * outward + math.sin(plane) * forward)
    return np.array([horizontal, math.cos(raise_angle)])


_JOINTS = {
    "r": {"shoulder": R_SHOULDER, "elbow": R_ELBOW, "wrist": R_WRIST, "hip": R_HIP, "knee": R_KNEE,
          "ankle": R_ANKLE, "eye": R_EYE, "ear": R_EAR},
    "l": {"shoulder": L_SHOULDER, "elbow": L_ELBOW, "wrist": L_WRIST, "hip": L_HIP, "knee": L_KNEE,
          "ankle": L_ANKLE, "eye": L_EYE, "ear": L_EAR},
}


def _foot(c: dict, step: tuple, name: str, side: float, hip_x: float, ground: float, unit: float) -> np.ndarray:
    """Ankle position: planted or swinging in the walk cycle, spread for stances and lunges."""
    phase, speed, direction = step
    stride = 0.23 * unit * speed
    cycle = (phase + (0.5 if name == "r" else 0.0)) % 1.0
    if cycle < 0.5:  # planted: slides back relative to the hip as the body moves on
        rel, lift = stride * (0.5 - 2 * cycle), 0.0
    else:  # swinging forward
        rel, lift = stride * (2 * cycle - 1.5), 0.09 * unit * speed * math.sin(2 * math.pi * (cycle - 0.5))
    lunge = c["lunge"] * unit
    lunge_shift = lunge if lunge * side > 0 else -0.25 * lunge  # leading foot out, trailing foot in
    x = hip_x + side * c["stance"] * unit * abs(math.cos(c["facing"])) + direction * rel + lunge_shift
    return np.array([x, ground - 0.035 * unit - lift])


def _hip_height(ankles: dict, hips_x: dict, leg: float, crouch: float) -> float:
    """As high as the most stretched leg allows (clamping over-long reaches), lowered by crouching."""
    hip_y = -np.inf
    for name, ankle in ankles.items():
        dx = min(abs(ankle[0] - hips_x[name]), 0.97 * leg)
        ankle[0] = hips_x[name] + math.copysign(dx, ankle[0] - hips_x[name])
        hip_y = max(hip_y, ankle[1] - math.sqrt(leg**2 - dx**2))
    return hip_y + 0.38 * leg * crouch


def _arm(c: dict, step: tuple, look: _Look, name: str, side: float, neck: np.ndarray, lean: float, unit: float):
    """Shoulder, elbow, wrist and hand tip of one arm."""
    phase, speed, _ = step
    facing = c["facing"]
    shoulder = neck + _rot(np.array([side * look.shoulder * unit * math.cos(facing), 0.02 * unit]), lean)
    plane = c[f"plane_{name}"]
    # walking arms swing opposite to the legs
    walk_swing = 0.12 + 0.45 * speed * math.sin(2 * math.pi * phase + (0 if name == "r" else math.pi))
    raise_angle = (1 - c["walk"]) * c[f"raise_{name}"] + c["walk"] * walk_swing
    upper = _rot(_arm_dir(raise_angle, plane, side, facing), lean)
    fore = _rot(_arm_dir(raise_angle + c[f"elbow_{name}"], plane + (math.pi / 2 - plane) * 0.6, side, facing), lean)
    elbow = shoulder + upper * look.upper_arm * unit
    wrist = elbow + fore * look.forearm * unit
    return shoulder, elbow, wrist, wrist + fore * 0.04 * unit


def _face(joints: np.ndarray, visible: np.ndarray, head_c: np.ndarray, rx: float, ry: float, facing: float) -> None:
    """Nose, eyes and ears, hidden where OpenPose would not see them (back of the head, far side)."""
    cos_f, sin_f = math.cos(facing), math.sin(facing)
    joints[NOSE] = head_c + np.array([0.85 * rx * sin_f, 0.25 * ry])
    visible[NOSE] = cos_f > -0.2
    for name, side in _SIDES.items():
        eye, ear = _JOINTS[name]["eye"], _JOINTS[name]["ear"]
        joints[eye] = head_c + np.array([(0.4 * side * cos_f + 0.7 * sin_f) * rx, -0.1 * ry])
        joints[ear] = head_c + np.array([(0.95 * side * cos_f - 0.15 * sin_f) * rx, 0.0])
        near = side * sin_f < 0.3  # not the far side of a profile
        visible[eye] = near and cos_f > -0.1
        visible[ear] = near


def _pose_at(look: _Look, tracks: dict, gait: tuple, t: int, width: int, height: int) -> _Pose:
    """The skeleton of frame ``t``: legs by IK from the feet up, then trunk, arms and head."""
    c = {k: float(v[t]) for k, v in tracks.items()}
    step = tuple(float(g[t]) for g in gait)
    unit = look.height * height * c["depth"]  # nearer (deeper) means bigger and lower on screen
    horizon = 0.35 * height
    ground = horizon + (0.83 * height - horizon) * c["depth"]
    cos_f, sin_f = math.cos(c["facing"]), math.sin(c["facing"])
    root_x = c["x"] * width
    hips_x = {name: root_x + side * look.hip * unit * cos_f for name, side in _SIDES.items()}
    ankles = {name: _foot(c, step, name, side, hips_x[name], ground, unit) for name, side in _SIDES.items()}
    hip_y = _hip_height(ankles, hips_x, (look.thigh + look.shin) * unit, c["crouch"])
    lean = c["lean"] + 0.35 * c["crouch"] * sin_f + 0.25 * c["lunge"]
    neck = np.array([root_x, hip_y]) + _rot(np.array([0.0, -look.torso * unit]), lean)

    joints = np.zeros((18, 2))
    joints[NECK] = neck
    hands, toes = {}, {}
    for name, side in _SIDES.items():
        j = _JOINTS[name]
        joints[j["hip"]] = (hips_x[name], hip_y)
        joints[j["ankle"]] = ankles[name]
        bend = 0.9 * sin_f + 0.45 * side * cos_f  # knees point forwards and a little outwards
        joints[j["knee"]] = _knee(joints[j["hip"]], ankles[name], look.thigh * unit, look.shin * unit, bend)
        joints[j["shoulder"]], joints[j["elbow"]], joints[j["wrist"]], hands[name] = _arm(
            c, step, look, name, side, neck, lean, unit
        )
        toe_dir = np.array([0.9 * sin_f + 0.3 * side * cos_f, 0.0])
        toes[name] = ankles[name] + toe_dir * 0.06 * unit + np.array([0.0, 0.025 * unit])

    head_c = neck + _rot(np.array([0.02 * unit * sin_f, -(look.neck + look.head_ry * 0.7) * unit]), lean)
    rx, ry = look.head_rx * unit, look.head_ry * unit
    visible = np.ones(18, dtype=bool)
    _face(joints, visible, head_c, rx, ry, c["facing"])
    return _Pose(joints, visible, c["facing"], hands, toes, (head_c[0], head_c[1], rx, ry), unit)


# =========================================================================== rendering


def _capsule(draw: ImageDraw.ImageDraw, p0, p1, r0: float, r1: float, color, k: float) -> None:
    """Tapered limb: a quad between two end circles (coordinates scaled by ``k``)."""
    a = np.asarray(p0, dtype=float) * k
    b = np.asarray(p1, dtype=float) * k
    r0, r1 = r0 * k, r1 * k
    d = b - a
    length = float(np.hypot(*d))
    if length > 1e-6:
        n = np.array([-d[1], d[0]]) / length
        quad = [tuple(a + n * r0), tuple(b + n * r1), tuple(b - n * r1), tuple(a - n * r0)]
        draw.polygon(quad, fill=color)
    draw.ellipse([a[0] - r0, a[1] - r0, a[0] + r0, a[1] + r0], fill=color)
    draw.ellipse([b[0] - r1, b[1] - r1, b[0] + r1, b[1] + r1], fill=color)


def _mix(c0, c1, w: float) -> tuple:
    return tuple(int(round(a * (1 - w) + b * w)) for a, b in zip(c0, c1))


def _draw_arm(draw, pose: _Pose, look: _Look, name: str, k: float) -> None:
    u = pose.unit
    sh, el, wr = (_JOINTS[name][part] for part in ("shoulder", "elbow", "wrist"))
    j = pose.joints
    w = look.limb_width * u / 2
    _capsule(draw, j[sh], j[el], w * 1.15, w, look.shirt, k)
    _capsule(draw, j[el], j[wr], w, w * 0.85, look.shirt, k)
    _capsule(draw, j[wr], pose.hands[name], w * 0.7, w * 0.6, look.skin, k)


def _draw_leg(draw, pose: _Pose, look: _Look, name: str, k: float) -> None:
    u = pose.unit
    hip, knee, ankle = (_JOINTS[name][part] for part in ("hip", "knee", "ankle"))
    j = pose.joints
    w = look.leg_width * u / 2
    _capsule(draw, j[hip], j[knee], w * 1.1, w * 0.9, look.trousers, k)
    _capsule(draw, j[knee], j[ankle], w * 0.9, w * 0.75, look.trousers, k)
    _capsule(draw, j[ankle], pose.toes[name], w * 0.7, w * 0.6, look.shoes, k)


def _draw_body(draw, pose: _Pose, look: _Look, k: float) -> None:
    """Trunk (trousers' seat, shirt, neck) and head; the shirt covers the waistband."""
    u = pose.unit
    j = pose.joints
    cos_f, sin_f = abs(math.cos(pose.facing)), abs(math.sin(pose.facing))
    mid_hip = (j[R_HIP] + j[L_HIP]) / 2
    axis = j[NECK] - mid_hip
    axis_u = axis / max(float(np.hypot(*axis)), 1e-6)
    across = np.array([-axis_u[1], axis_u[0]])
    half_sh = math.hypot(look.shoulder * cos_f, 0.07 * sin_f) * u * 0.95
    half_hip = math.hypot((look.hip + 0.025) * cos_f, 0.065 * sin_f) * u
    seat = [mid_hip + across * half_hip - axis_u * 0.04 * u, mid_hip - across * half_hip - axis_u * 0.04 * u,
            j[L_HIP], j[R_HIP]]
    draw.polygon([tuple(p * k) for p in seat], fill=look.trousers)
    _capsule(draw, mid_hip - across * half_hip * 0.5, mid_hip + across * half_hip * 0.5,
             look.leg_width * u * 0.55, look.leg_width * u * 0.55, look.trousers, k)
    waist = mid_hip + axis_u * 0.03 * u
    top = j[NECK] - axis_u * 0.015 * u
    shirt = [top - across * half_sh, top + across * half_sh, waist + across * half_hip * 1.05,
             waist - across * half_hip * 1.05]
    draw.polygon([tuple(p * k) for p in shirt], fill=look.shirt)
    _capsule(draw, j[NECK] - across * half_sh * 0.8, j[NECK] + across * half_sh * 0.8,
             0.03 * u, 0.03 * u, look.shirt, k)
    cx, cy, rx, ry = pose.head
    _capsule(draw, j[NECK], (cx, cy + ry * 0.5), 0.022 * u, 0.022 * u, _mix(look.skin, look.hair, 0.4), k)
    draw.ellipse([(cx - rx) * k, (cy - ry) * k, (cx + rx) * k, (cy + ry) * k], fill=look.hair)
    face = math.cos(pose.facing)
    if face > 0.1:  # the face shows below the hair when the dancer looks towards the camera
        fx = cx + 0.25 * rx * math.sin(pose.facing)
        frx = rx * (0.55 + 0.3 * face)
        draw.ellipse([(fx - frx) * k, (cy - 0.25 * ry) * k, (fx + frx) * k, (cy + 0.95 * ry) * k],
                     fill=_mix(look.hair, look.skin, 0.55 * min(1.0, face + 0.2)))


def _draw_reflection(draw, pose: _Pose, floor_color, k: float) -> None:
    """Faint shadow/reflection on the glossy floor under the feet, as in the real studio."""
    u = pose.unit
    a, b = pose.joints[R_ANKLE], pose.joints[L_ANKLE]
    y = max(a[1], b[1]) + 0.04 * u
    x0, x1 = min(a[0], b[0]) - 0.04 * u, max(a[0], b[0]) + 0.04 * u
    shade = _mix(floor_color, (40, 40, 45), 0.22)
    draw.ellipse([x0 * k, (y - 0.012 * u) * k, x1 * k, (y + 0.03 * u) * k], fill=shade)


def _render_frame(studio_2x: Image.Image, pose: _Pose, look: _Look) -> Image.Image:
    """Dancer over the studio at 2x, box-downsampled: the antialiasing a camera would give."""
    img = studio_2x.copy()
    draw = ImageDraw.Draw(img)
    k = float(_SUPERSAMPLE)
    floor_y = int(min(max(pose.joints[R_ANKLE][1], pose.joints[L_ANKLE][1]) * k, img.height - 1))
    floor_x = int(min(max(pose.joints[NECK][0] * k, 0), img.width - 1))
    _draw_reflection(draw, pose, img.getpixel((floor_x, floor_y)), k)
    sin_f = math.sin(pose.facing)
    # Sides facing away are drawn first; in a frontal view both arms go in front of the trunk.
    far = "l" if sin_f > 0 else "r"
    near = "r" if far == "l" else "l"
    profile = abs(sin_f) > 0.35
    if profile:
        _draw_arm(draw, pose, look, far, k)
    _draw_leg(draw, pose, look, far, k)
    _draw_leg(draw, pose, look, near, k)
    _draw_body(draw, pose, look, k)
    if not profile:
        _draw_arm(draw, pose, look, far, k)
    _draw_arm(draw, pose, look, near, k)
    return img.reduce(_SUPERSAMPLE)


def _render_skeleton(pose: _Pose, width: int, height: int) -> Image.Image:
    """OpenPose-style stick figure: full-colour joint dots, limbs blended at 0.6 on white."""
    k = float(_SUPERSAMPLE)
    size = (width * _SUPERSAMPLE, height * _SUPERSAMPLE)
    stick = max(1.0, 0.0155 * height * k)  # OpenPose's 4 px sticks on 512-high frames
    dot = max(1.0, 0.0078 * height * k)
    dots = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(dots)
    j = pose.joints * k
    for idx in range(18):
        if pose.visible[idx]:
            x, y = j[idx]
            draw.ellipse([x - dot, y - dot, x + dot - 1, y + dot - 1], fill=OPENPOSE_COLORS[idx])
    limbs = dots.copy()
    draw = ImageDraw.Draw(limbs)
    for color, (a, b) in zip(OPENPOSE_COLORS, OPENPOSE_LIMBS):
        if pose.visible[a] and pose.visible[b]:
            draw.line([tuple(j[a]), tuple(j[b])], fill=color, width=int(round(stick)))
    return Image.blend(dots, limbs, 0.6).reduce(_SUPERSAMPLE)


# =========================================================================== videos and layout


def _video_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent stream per (seed, split, video) so worker order never changes the output."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index]))


def _video_poses(spec: SyntheticDanceSpec, split: str, index: int):
    """Look and per-frame skeletons of one video, from its own random stream."""
    rng = _video_rng(spec.seed, split, index)
    look = _sample_look(rng)
    tracks = _choreography(rng, spec.frames_per_video)
    unit = look.height * spec.height
    gait = _gait(tracks["x"] * spec.width, tracks["depth"], stride_px=0.23 * unit)
    poses = [_pose_at(look, tracks, gait, t, spec.width, spec.height) for t in range(spec.frames_per_video)]
    return look, poses


def _save(img: Image.Image, path: pathlib.Path) -> None:
    img.save(path, format="PNG", compress_level=1)


def _sensor_noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Faint per-frame noise: the real background flickers by about half a grey level."""
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0.0, _NOISE_STD, size=(img.height, img.width, 1))
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="RGB")


def _video_folders(root: pathlib.Path, spec: SyntheticDanceSpec, split: str, index: int):
    """(frame folder, pose folder, number of the first frame, frames to render) of one video.

    Train and val videos go back to back into one folder each; a test sequence
    gets its own folders and only its first frame, the only one the reference reads.
    """
    if split == "test":
        img_dir, label_dir = root / "test/test_img" / str(index), root / "test/test_label" / str(index)
        img_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        return img_dir, label_dir, 0, 1
    offset = index * spec.frames_per_video
    return root / split / f"{split}_img", root / split / f"{split}_label", offset, spec.frames_per_video


def _write_video(args) -> int:
    """Render one video and its poses into the layout (a process-pool task)."""
    root, spec_dict, split, index = args
    spec = SyntheticDanceSpec(**spec_dict)
    look, poses = _video_poses(spec, split, index)
    noise_rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _SPLIT_CODES[split], index, 1]))
    studio = Image.fromarray(
        _studio(spec.width * _SUPERSAMPLE, spec.height * _SUPERSAMPLE, look.studio), mode="RGB"
    )
    img_dir, label_dir, offset, frames_to_render = _video_folders(pathlib.Path(root), spec, split, index)
    for t, pose in enumerate(poses):
        name = f"frame{offset + t:06d}.png"
        if t < frames_to_render:
            _save(_sensor_noise(_render_frame(studio, pose, look), noise_rng), img_dir / name)
        _save(_render_skeleton(pose, spec.width, spec.height), label_dir / name)
    return len(poses)


def _jobs(root: pathlib.Path, spec: SyntheticDanceSpec):
    spec_dict = dataclasses.asdict(spec)
    counts = {"train": spec.train_videos, "val": spec.val_videos, "test": spec.test_videos}
    return [(str(root), spec_dict, split, i) for split, n in counts.items() for i in range(n)]


def _make_layout(root: pathlib.Path) -> None:
    for split in ("train", "val"):
        for kind in ("img", "label"):
            (root / split / f"{split}_{kind}").mkdir(parents=True, exist_ok=True)
    (root / "test/test_img").mkdir(parents=True, exist_ok=True)
    (root / "test/test_label").mkdir(parents=True, exist_ok=True)


def _write(root: pathlib.Path, spec: SyntheticDanceSpec, workers: int) -> None:
    _make_layout(root)
    jobs = _jobs(root, spec)
    if len(jobs) * spec.frames_per_video < _PARALLEL_MIN_FRAMES:
        workers = 1
    write_jobs(_write_video, jobs, workers)


def generate(root, spec: SyntheticDanceSpec, workers: int = 1) -> pathlib.Path:
    """Write the synthetic dataset in the reference layout under ``root`` and return it
    (`GeneratedDataset.generate`: refuses a root that already holds a split).

    Serial by default: the default spec takes ~10 s on 2 cores, and worker processes
    (``workers > 1``, spawned because forking a process that runs JAX can deadlock) need
    an importable ``__main__``. The output is identical either way.
    """
    return DATASET.generate(root, spec, lambda folder: _write(folder, spec, workers))


def ensure_synthetic(cache_root, spec: SyntheticDanceSpec, workers: int = 1) -> pathlib.Path:
    """``<cache_root>/synthetic_dance_<digest>/``, generated only if absent or incomplete
    (`data.generated`: never half-written)."""
    return DATASET.ensure(cache_root, spec, lambda folder: generate(folder, spec, workers=workers))
