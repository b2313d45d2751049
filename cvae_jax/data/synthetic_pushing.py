"""Procedural stand-in for the BAIR robot pushing data, in the processed-folder layout.

The real data (30 GB of tfrecords converted to PNG folders) cannot ship with the
project, so smoke runs and tests of the action-conditioned SVG model train on this.  It
imitates what a video predictor has to learn there: a static textured table seen
from above, a gripper driven by smooth random actions (it grows, and its shadow
drifts and softens, as it rises towards the camera) at the end of a two-link arm
reaching in from the top edge (as in BAIR, the arm's sweep is most of what
changes between frames), and a few coloured objects that move only when the
lowered gripper pushes them. The gripper moves ~4.3 px per frame on average (version 3;
version 1 moved ~2 px and version 2 ~3 px: see `_simulate` for why).

Table coordinates: x, y in [-1, 1] (clipped), z in [0, 1] (0 touches the table).
Frame pixel (column, row) = (32 + 24 x, 32 + 24 y), with pixel i covering [i, i+1);
the gripper is drawn ``0.8 + 0.4 z`` times its mid-height size.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
import pathlib

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from cvae_jax.data.generated import GeneratedDataset, check_spec_fields, write_jobs

__all__ = ["SyntheticPushingSpec", "render_sequence", "generate", "ensure_synthetic", "DATASET", "COMPLETE_MARKER"]

# Bump whenever the rendered output changes so cached datasets are regenerated.
GENERATOR_VERSION = 3
SPLITS = ("train", "validate", "test")
_SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}
SIZE = 64
PX_PER_UNIT = 24.0  # frame pixels per table unit
_K = 2  # supersampling factor
_LO, _HI = np.array([-1.0, -1.0, 0.0]), np.array([1.0, 1.0, 1.0])
PUSH_HEIGHT = 0.35  # below this z the gripper pushes what it overlaps
_OBJECT_LIMIT = 1.25  # object centres stay within +-(this - radius): fully on screen
_NOISE_STD = 1.2  # grey levels at the written size
_CHUNK = 16  # sequences per process-pool task
_LINK = 1.85  # arm link length, table units


@dataclasses.dataclass(frozen=True)
class SyntheticPushingSpec:
    seed: int = 0
    train_sequences: int = 512
    validate_sequences: int = 64
    test_sequences: int = 64
    seq_len: int = 30
    per_folder: int = 256  # sequences per traj_a_to_b folder, as in BAIR's tfrecord files

    def __post_init__(self):
        check_spec_fields(self, {"seed": 0, "train_sequences": 1, "validate_sequences": 0, "test_sequences": 0,
                                 "seq_len": 1, "per_folder": 1})

    def counts(self) -> dict:
        return {"train": self.train_sequences, "validate": self.validate_sequences, "test": self.test_sequences}

    def digest(self) -> str:
        return DATASET.digest(self)


DATASET = GeneratedDataset("synthetic_pushing", SyntheticPushingSpec, GENERATOR_VERSION, SPLITS)
COMPLETE_MARKER = DATASET.marker_file


# =========================================================================== scene and motion


@dataclasses.dataclass(frozen=True)
class _Scene:
    """One sequence: what the actions did (tracks) and how it looks."""

    positions: np.ndarray  # (T, 3) end-effector state p_t shown in frame t
    actions: np.ndarray  # (T, 4) a_t = (dx, dy, dz, grip) taken at frame t
    jaw: np.ndarray  # (T,) rendered jaw opening in [0, 1], lagging the commanded grip
    objects: np.ndarray  # (T, n, 2) object centres in table units
    radii: np.ndarray  # (n,) collision radii in table units
    boxes: tuple  # per object: rounded box (True) or disc
    colours: tuple  # per object RGB
    angle: float  # jaw axis, radians
    base: np.ndarray  # (2,) arm base (shoulder), off the top of the image
    elbow_side: float  # +-1: which way the elbow bends
    table: np.ndarray  # (2*SIZE, 2*SIZE, 3) uint8, supersampled


def _rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """Independent stream per (seed, split, sequence) so neither order nor count change a sequence."""
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index, stream]))


def footprint(z: float) -> float:
    """Pushing radius of the gripper (table units); it is drawn bigger when higher."""
    return 4.5 * (0.8 + 0.4 * z) / PX_PER_UNIT


def _place_objects(rng, p0) -> tuple[np.ndarray, np.ndarray]:
    """1-3 non-overlapping objects, none under the gripper's start."""
    n = int(rng.integers(1, 4))
    radii = rng.uniform(3.5, 6.0, n) / PX_PER_UNIT
    pos = np.zeros((n, 2))
    for i in range(n):
        for _ in range(200):
            pos[i] = rng.uniform(-0.8, 0.8, 2)
            gap = np.hypot(*(pos[:i] - pos[i]).T) - radii[:i] - radii[i]
            if np.all(gap > 0.08) and np.hypot(*(pos[i] - p0[:2])) > footprint(p0[2]) + radii[i] + 0.1:
                break
    return pos, radii


def _resolve(objects, radii, grip_xy, grip_r) -> None:
    """Kinematic push in place: out of the gripper along the line of centres, then apart, then onto the table."""
    if grip_xy is not None:
        d = objects - grip_xy
        dist = np.hypot(d[:, 0], d[:, 1])
        hit = dist < grip_r + radii
        for i in np.flatnonzero(hit):
            u = d[i] / dist[i] if dist[i] > 1e-9 else np.array([1.0, 0.0])
            objects[i] = grip_xy + u * (grip_r + radii[i])
    for _ in range(3):
        for i in range(len(radii)):
            for j in range(i + 1, len(radii)):
                d = objects[j] - objects[i]
                dist = math.hypot(*d)
                overlap = radii[i] + radii[j] - dist
                if overlap > 0:
                    u = d / dist if dist > 1e-9 else np.array([1.0, 0.0])
                    objects[i] -= u * overlap / 2
                    objects[j] += u * overlap / 2
    lim = (_OBJECT_LIMIT - radii)[:, None]
    np.clip(objects, -lim, lim, out=objects)


def _waypoints(rng, p, objects, radii):
    """Next targets [(xy, z)]: a push through a random object (approach behind it, then through), or a roam."""
    if rng.random() < 0.6:
        i = int(rng.integers(len(radii)))
        to = objects[i] - p[:2]
        ang = math.atan2(to[1], to[0]) + rng.uniform(-0.6, 0.6)
        u = np.array([math.cos(ang), math.sin(ang)])
        z = rng.uniform(0.0, 0.2)
        behind = objects[i] - u * (radii[i] + footprint(z) + 0.12)
        through = objects[i] + u * rng.uniform(0.3, 0.7)
        return [(np.clip(behind, -0.95, 0.95), z), (np.clip(through, -0.95, 0.95), z)]
    return [(rng.uniform(-0.9, 0.9, 2), rng.uniform(0.1, 1.0))]


def _simulate(rng, seq_len: int) -> dict:
    """Actions from a smooth waypoint-following controller, positions p_{t+1} = clip(p_t + a_t[:3]), pushes."""
    p = np.array([*rng.uniform(-0.85, 0.85, 2), rng.uniform(0.2, 0.9)])
    objects, radii = _place_objects(rng, p)
    # 6-8 px per frame at cruise, ~4.3 on average. Slower arms left repeating the last frame
    # too strong a baseline for what the CPU preset learns in its few hundred steps (fading
    # the arm where it was): +0.7 dB at ~2 px, +1.2-1.9 dB at ~3 px.
    cruise = rng.uniform(0.26, 0.34)
    v, wobble = np.zeros(3), np.zeros(2)
    grip = jaw = float(rng.integers(2))
    queue, steps = _waypoints(rng, p, objects, radii) if rng.random() < 0.75 else [], 0
    pos, act, jaws, tracks = [], [], [], []
    for _ in range(seq_len):
        pos.append(p.copy()), jaws.append(jaw), tracks.append(objects.copy())
        if not queue or np.hypot(*(queue[0][0] - p[:2])) < 0.1 or steps > 14:
            queue, steps = (queue[1:] if queue else []) or _waypoints(rng, p, objects, radii), 0
        steps += 1
        target, z_target = queue[0]
        to = target - p[:2]
        dist = math.hypot(*to)
        wobble = 0.8 * wobble + rng.normal(0.0, 0.012, 2)
        desired = to / max(dist, 1e-9) * cruise * min(1.0, dist / 0.2) + wobble
        v[:2] += 0.35 * (desired - v[:2])
        v[2] += 0.4 * (float(np.clip(0.35 * (z_target - p[2]), -0.12, 0.12)) - v[2])
        if rng.random() < 0.07:
            grip = float(rng.choice([0.0, 1.0, rng.uniform()]))
        a = np.round(np.array([*v, grip]), 6)  # 6 decimals: the CSV text is exact
        nxt = np.round(np.clip(p + a[:3], _LO, _HI), 6)
        for s in (0.25, 0.5, 0.75, 1.0):  # sub-steps, so a fast gripper cannot jump over an object
            q = p + s * (nxt - p)
            _resolve(objects, radii, q[:2] if q[2] < PUSH_HEIGHT else None, footprint(q[2]))
        p, jaw = nxt, jaw + 0.5 * (grip - jaw)
        act.append(a)
    return dict(positions=np.array(pos), actions=np.array(act), jaw=np.array(jaws),
                objects=np.array(tracks), radii=radii)


# =========================================================================== appearance


def _rgb(h, s, v) -> np.ndarray:
    return 255.0 * np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _noise(rng, rows: int, cols: int, n: int) -> np.ndarray:
    """Unit noise on a rows x cols grid, bicubically stretched to n x n: smooth blotches or streaks."""
    low = Image.fromarray(rng.normal(size=(rows, cols)).astype(np.float32), mode="F")
    return np.asarray(low.resize((n, n), Image.BICUBIC))


def _table(rng) -> tuple[np.ndarray, float]:
    """Wood grain or cloth, with a gentle light gradient; returns (uint8 image, hue) at 2x."""
    n = _K * SIZE
    y, x = np.mgrid[0:n, 0:n] / n - 0.5
    if rng.random() < 0.5:  # wood: wavy rings along one axis plus streaks along the grain
        hue = rng.uniform(0.05, 0.11)
        base = _rgb(hue, rng.uniform(0.3, 0.6), rng.uniform(0.55, 0.8))
        rings = np.sin(2 * np.pi * (y * rng.uniform(3, 8) + 0.35 * _noise(rng, 4, 4, n)))
        lum = 1 + 0.05 * rings + 0.035 * _noise(rng, n // 2, 6, n) + 0.03 * _noise(rng, 5, 5, n)
        if rng.random() < 0.5:
            lum = lum.T
    else:  # cloth: weave, fibres and blotches
        hue = rng.random()
        base = _rgb(hue, rng.uniform(0.05, 0.3), rng.uniform(0.5, 0.85))
        weave = np.sin(np.pi * 0.9 * np.arange(n))
        lum = 1 + 0.04 * _noise(rng, 6, 6, n) + 0.02 * weave[:, None] * weave[None, :]
        lum += 0.03 * rng.normal(size=(n, n))
    gx, gy = rng.uniform(-0.08, 0.08, 2)
    lum *= 1 + gx * x + gy * y - 0.12 * (x**2 + y**2)
    return np.clip(base * lum[..., None], 0, 255).astype(np.uint8), hue


def _object_colours(rng, n: int, table_hue: float) -> tuple:
    """Saturated, well separated hues, none close to the table's."""
    h0 = rng.random()
    hues = [h0 + k / n + rng.uniform(-0.05, 0.05) for k in range(n)]
    hues = [h + 0.15 if abs((h - table_hue + 0.5) % 1 - 0.5) < 0.08 else h for h in hues]
    return tuple(tuple(_rgb(h, rng.uniform(0.75, 0.95), rng.uniform(0.75, 0.95))) for h in hues)


def _scene(seed: int, split: str, index: int, seq_len: int = 30) -> _Scene:
    """Motion and looks from separate streams, so a shorter sequence is a prefix of a longer one."""
    sim = _simulate(_rng(seed, split, index), seq_len)
    rng = _rng(seed, split, index, stream=2)
    table, hue = _table(rng)
    n = len(sim["radii"])
    return _Scene(**sim, boxes=tuple(bool(b) for b in rng.random(n) < 0.4),
                  colours=_object_colours(rng, n, hue), angle=float(rng.uniform(0, np.pi)),
                  base=np.array([rng.uniform(-0.5, 0.5), -2.3]), elbow_side=float(rng.choice([-1.0, 1.0])),
                  table=table)


# =========================================================================== rendering


def _px(xy) -> np.ndarray:
    """Table units to supersampled pixels."""
    return _K * (SIZE / 2 + PX_PER_UNIT * np.asarray(xy, dtype=float))


def _shape(draw, c, r, box: bool, **kw) -> None:
    bounds = [c[0] - r, c[1] - r, c[0] + r, c[1] + r]
    if box:
        draw.rounded_rectangle(bounds, radius=0.35 * r, **kw)
    else:
        draw.ellipse(bounds, **kw)


def _draw_objects(draw, scene: _Scene, t: int) -> None:
    """Contact shadow, darker rim, body lit from the top left, specular spot."""
    for c, r, box, col in zip(_px(scene.objects[t]), scene.radii * PX_PER_UNIT * _K, scene.boxes, scene.colours):
        box_r = r * 0.9 if box else r
        _shape(draw, c + 0.12 * r, box_r, box, fill=(0, 0, 0, 70))
        _shape(draw, c, box_r, box, fill=tuple(int(0.68 * v) for v in col))
        _shape(draw, c - 0.08 * r, box_r * 0.85, box, fill=tuple(int(v) for v in col))
        _shape(draw, c - 0.35 * r, 0.28 * r, False, fill=(255, 255, 255, 90))


def _arm(base, wrist, side: float):
    """Elbow of a two-link arm (links of 1.85 table units, seen from above) reaching from base to wrist."""
    d = wrist - base
    dist = max(float(np.hypot(*d)), 1e-6)
    a = min(dist, 2 * _LINK) / 2
    normal = np.array([-d[1], d[0]]) / dist
    return base + d / dist * a + side * normal * math.sqrt(max(_LINK**2 - a**2, 0.0))


def _draw_robot(draw, scene: _Scene, t: int, parts, mask: bool = False) -> None:
    """Arm links and gripper (dark metal, light rims, so it stands out on any table); as a
    shadow silhouette when ``mask``: every colour 255, shifted and later blurred by height."""
    p, jaw = scene.positions[t], scene.jaw[t]
    s = _K * (0.8 + 0.4 * p[2])  # nearer the camera is bigger
    shift = _K * (1.0 + 3.5 * p[2]) if mask else 0.0

    def ink(c):
        return 255 if mask else c

    wrist = _px(p[:2]) + shift
    if "arm" in parts:
        base = _px(scene.base) + shift
        elbow = _px(_arm(scene.base, p[:2], scene.elbow_side)) + shift
        for a, b, width in ((base, elbow, 8.0), (elbow, wrist, 5.5)):
            r = _K * width / 2
            draw.line([tuple(a), tuple(b)], fill=ink((44, 46, 52)), width=int(2 * r))
            draw.line([tuple(a), tuple(b)], fill=ink((88, 91, 98)), width=int(0.6 * r))
            for c in (a, b):
                draw.ellipse([*(c - r), *(c + r)], fill=ink((44, 46, 52)))
    if "gripper" in parts:
        u = np.array([math.cos(scene.angle), math.sin(scene.angle)])
        w = np.array([-u[1], u[0]])
        gap = (3.4 + 2.1 * jaw) * s
        for side in (-1, 1):
            poly = [tuple(wrist + side * u * (gap + a * 0.9 * s) + b * 2.2 * s * w)
                    for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
            draw.polygon(poly, fill=ink((78, 80, 86)), outline=ink((200, 203, 208)), width=_K)
        r = 3.6 * s
        draw.ellipse([*(wrist - r), *(wrist + r)], fill=ink((60, 62, 68)), outline=ink((205, 208, 212)), width=_K)
        r = 1.6 * s  # wrist flange
        draw.ellipse([*(wrist - r), *(wrist + r)], fill=ink((110, 113, 120)))


def _frames(scene: _Scene, parts=("arm", "gripper"), noise_rng: np.random.Generator | None = None) -> np.ndarray:
    """(T, 64, 64, 3) uint8: rendered at 2x and box-downsampled, as a camera would antialias."""
    table = Image.fromarray(scene.table, mode="RGB")
    n = _K * SIZE
    out = np.empty((len(scene.positions), SIZE, SIZE, 3), dtype=np.float32)
    for t, z in enumerate(scene.positions[:, 2]):
        img = table.copy()
        _draw_objects(ImageDraw.Draw(img, "RGBA"), scene, t)
        if parts:  # soft shadow, offset to the bottom right and blurrier the higher the gripper is
            mask = Image.new("L", (n, n))
            _draw_robot(ImageDraw.Draw(mask), scene, t, parts, mask=True)
            shade = mask.reduce(_K).filter(ImageFilter.GaussianBlur(float(0.4 + 1.8 * z)))  # blurred: 1x will do
            lut = np.rint(255 - (0.55 - 0.25 * z) * np.arange(256)).astype(np.uint8)
            shade = shade.resize((n, n), Image.BILINEAR).point(lut.tolist())
            img = ImageChops.multiply(img, Image.merge("RGB", (shade,) * 3))
            _draw_robot(ImageDraw.Draw(img), scene, t, parts)
        out[t] = np.asarray(img.reduce(_K))
    if noise_rng is not None:  # sensor noise
        out += _NOISE_STD * noise_rng.standard_normal(out.shape, dtype=np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_sequence(seed: int, split: str, index: int, seq_len: int = 30):
    """(frames uint8 (T, 64, 64, 3), actions float32 (T, 4), positions float32 (T, 3)), deterministic."""
    scene = _scene(seed, split, index, seq_len)
    frames = _frames(scene, noise_rng=_rng(seed, split, index, stream=1))
    return frames, scene.actions.astype(np.float32), scene.positions.astype(np.float32)


# =========================================================================== layout


def sequence_dir(root, split: str, index: int, per_folder: int, count: int) -> pathlib.Path:
    """``root/split/traj_<first>_to_<last>/<k>``: folders of ``per_folder`` sequences, like BAIR's files."""
    first = index // per_folder * per_folder
    last = min(first + per_folder, count) - 1
    return pathlib.Path(root) / split / f"traj_{first}_to_{last}" / str(index - first)


def _write_chunk(args) -> int:
    """Render and write sequences [start, stop) of one split (a process-pool task)."""
    root, spec_dict, split, start, stop = args
    spec = SyntheticPushingSpec(**spec_dict)
    for i in range(start, stop):
        frames, actions, positions = render_sequence(spec.seed, split, i, spec.seq_len)
        d = sequence_dir(root, split, i, spec.per_folder, spec.counts()[split])
        d.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(frames):
            Image.fromarray(frame, mode="RGB").save(d / f"{t}.png", format="PNG", compress_level=1)
        np.savetxt(d / "actions.csv", actions, fmt="%.6f", delimiter=",")
        np.savetxt(d / "endeffector_positions.csv", positions, fmt="%.6f", delimiter=",")
    return stop - start


def _write(root: pathlib.Path, spec: SyntheticPushingSpec, workers: int) -> None:
    for split in SPLITS:
        (root / split).mkdir(parents=True)
    spec_dict = dataclasses.asdict(spec)
    jobs = [(str(root), spec_dict, split, a, min(a + _CHUNK, n))
            for split, n in spec.counts().items() for a in range(0, n, _CHUNK)]
    write_jobs(_write_chunk, jobs, workers)


def generate(root, spec: SyntheticPushingSpec, workers: int = 1) -> pathlib.Path:
    """Write the synthetic dataset in the processed BAIR layout under ``root`` and return it
    (`GeneratedDataset.generate`: refuses a root that already holds a split).

    Serial by default (the default spec takes about 25 s on 2 cores, mostly PNG encoding
    and drawing); ``workers > 1`` uses spawned processes (forking a process that runs JAX
    can deadlock). The output is identical either way.
    """
    return DATASET.generate(root, spec, lambda folder: _write(folder, spec, workers))


def ensure_synthetic(cache_root, spec: SyntheticPushingSpec, workers: int = 1) -> pathlib.Path:
    """``<cache_root>/synthetic_pushing_<digest>/``, generated only if absent or incomplete
    (`data.generated`: never half-written)."""
    return DATASET.ensure(cache_root, spec, lambda folder: generate(folder, spec, workers=workers))
