"""The Lab4 pose-conditioned CVAE (modules/modules.py of the reference), NHWC.

Module names map to the reference `state_dict` prefixes:
frame_encoder=frame_transformation, pose_encoder=label_transformation,
posterior=Gaussian_Predictor, fusion=Decoder_Fusion, generator=Generator; the index
inside each `layers` list is the reference's Sequential index.

Kept reference quirks: LeakyReLU(True) is slope 1.0 (an identity) in the pose encoder and
before the posterior head; ConvFFN's gate slope is 0.1. Pose-encoder BatchNorm: batch
statistics while training (as the reference); at generation time running averages by
default (`bn_mode="running"`) so a frame's output never depends on which other videos
share its batch, or per-step batch statistics with `bn_mode="batch"`, which reproduces the
reference, whose model never leaves training mode.

Extensions, all off in the reference (`Scene` holds what they take from the first frame):
- `copy_scene`: the frame is the given first frame outside where the dancer stands in the
  first and the current pose (`scene_gate`);
- `scene_fill` (with `copy_scene`): the first frame's dancer is filled in from the studio
  around it (`harmonic_fill`), so the copy covers all but the current dancer's area;
- `scene_alpha` (with `copy_scene`): inside that area the generator also draws an opacity
  over the copied scene (one more output channel).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from cvae_jax import losses
from cvae_jax.layers import Conv, DepthConvBlock, FrameBatchNorm, ResidualBlock, reparameterize
from cvae_jax.rollout import rollout, scan_steps, time_major

TORCH_PREFIXES = {
    "frame_encoder": "frame_transformation",
    "pose_encoder": "label_transformation",
    "posterior": "Gaussian_Predictor",
    "fusion": "Decoder_Fusion",
    "generator": "Generator",
}


class Identity(nnx.Module):
    """LeakyReLU(True) of the reference: negative_slope=True=1.0."""

    def __call__(self, x):
        return x


class PoseEncoder(nnx.Module):
    # Sequential index of each part in the reference Label_Encoder (0 is the reflection
    # padding, 3 the identity LeakyReLU): the state_dict names' middle part
    TORCH_INDEX = {"conv": 1, "bn": 2, "res": 4}

    def __init__(self, out_ch: int, *, rngs: nnx.Rngs):
        self.conv = Conv(3, 16, 7, rngs=rngs)
        self.bn = FrameBatchNorm(16)
        self.res = ResidualBlock(16, out_ch, rngs=rngs)

    def __call__(self, pose, use_running_average: bool):
        pad = [(0, 0)] * (pose.ndim - 3) + [(3, 3), (3, 3), (0, 0)]
        x = self.conv(jnp.pad(pose, pad, mode="reflect"))
        x, moments = self.bn(x, use_running_average)
        return self.res(x), moments  # LeakyReLU(True) between them is the identity


class Lab4CVAE(nnx.Module):
    def __init__(self, F_dim: int = 128, L_dim: int = 32, N_dim: int = 12, D_out_dim: int = 192,
                 output_sigmoid: bool = False, copy_scene: bool = False, scene_fill: bool = False,
                 scene_alpha: bool = False, *, rngs: nnx.Rngs):
        F, L, N, D = F_dim, L_dim, N_dim, D_out_dim
        if (scene_fill or scene_alpha) and not copy_scene:
            raise ValueError("scene_fill and scene_alpha refine copy_scene; turn it on too")
        self.N_dim, self.output_sigmoid, self.copy_scene = N, output_sigmoid, copy_scene
        self.scene_fill, self.scene_alpha = scene_fill, scene_alpha
        self.frame_encoder = nnx.Sequential(
            ResidualBlock(3, 16, rngs=rngs), DepthConvBlock(16, 16, rngs=rngs),
            ResidualBlock(16, 32, rngs=rngs), DepthConvBlock(32, 32, rngs=rngs),
            ResidualBlock(32, 64, rngs=rngs), DepthConvBlock(64, 64, rngs=rngs),
            Conv(64, F, 3, padding=1, rngs=rngs))
        self.pose_encoder = PoseEncoder(L, rngs=rngs)
        self.posterior = nnx.Sequential(
            ResidualBlock(F + L, N // 4, rngs=rngs), DepthConvBlock(N // 4, N // 4, rngs=rngs),
            ResidualBlock(N // 4, N // 2, rngs=rngs), DepthConvBlock(N // 2, N // 2, rngs=rngs),
            ResidualBlock(N // 2, N, rngs=rngs), Identity(),
            Conv(N, 2 * N, 1, rngs=rngs))
        C = F + L + N
        self.fusion = nnx.Sequential(
            DepthConvBlock(C, C, rngs=rngs), ResidualBlock(C, C // 4, rngs=rngs),
            DepthConvBlock(C // 4, C // 2, rngs=rngs), ResidualBlock(C // 2, C // 2, rngs=rngs),
            DepthConvBlock(C // 2, D // 2, rngs=rngs), Conv(D // 2, D, 1, rngs=rngs))
        self.generator = nnx.Sequential(
            DepthConvBlock(D, D, rngs=rngs), ResidualBlock(D, D // 2, rngs=rngs),
            DepthConvBlock(D // 2, D // 2, rngs=rngs), ResidualBlock(D // 2, D // 4, rngs=rngs),
            DepthConvBlock(D // 4, D // 4, rngs=rngs), ResidualBlock(D // 4, D // 8, rngs=rngs),
            DepthConvBlock(D // 8, D // 8, rngs=rngs), Conv(D // 8, 4 if scene_alpha else 3, 1, rngs=rngs))

    def encode_frame(self, frame):
        return self.frame_encoder(frame)

    def encode_pose(self, pose, use_running_average: bool):
        """Pose features and the BatchNorm batch moments (per leading time index)."""
        return self.pose_encoder(pose, use_running_average)

    def posterior_moments(self, frame_feat, pose_feat):
        """(mu, logvar) of q(z | x_t, p_t); the head predicts log-variance."""
        out = self.posterior(jnp.concatenate([frame_feat, pose_feat], axis=-1))
        return jnp.split(out, 2, axis=-1)

    def decode(self, prev_feat, pose_feat, z, scene: Scene | None = None, gate=None):
        """The next frame; with `copy_scene`, `scene` is the video's `Scene` and `gate` this
        step's `scene_gate`: the frame is the copied scene where the gate is 1, the generated
        one (over the scene by its opacity, with `scene_alpha`) where it is 0."""
        x = self.generator(self.fusion(jnp.concatenate([prev_feat, pose_feat, z], axis=-1)))
        if self.scene_alpha:
            x, alpha = x[..., :3], jax.nn.sigmoid(x[..., 3:])
        x = jax.nn.sigmoid(x) if self.output_sigmoid else x
        if not self.copy_scene:
            return x
        background = scene.background.astype(x.dtype)
        if self.scene_alpha:
            x = alpha * x + (1 - alpha) * background
        gate = gate.astype(x.dtype)
        return gate * background + (1 - gate) * x


def dancer_area(pose):
    """Where the dancer may stand, from a pose image (a skeleton drawn on a white canvas):
    every pixel with ink (darkest channel below 0.98), widened by a max-pool over a window
    a quarter of the frame height wide, which covers the body around its skeleton.
    (..., H, W, 3) -> (..., H, W, 1) of 0 and 1."""
    ink = (jnp.min(pose, axis=-1, keepdims=True) < 0.98).astype(pose.dtype)
    k = 2 * (pose.shape[-3] // 8) + 1
    window = (1,) * (ink.ndim - 3) + (k, k, 1)
    return jax.lax.reduce_window(ink, jnp.array(0, ink.dtype), jax.lax.max, window, (1,) * ink.ndim, "SAME")


def harmonic_fill(image, hole):
    """`image` with the pixels where `hole` is 1 replaced by the harmonic (4-neighbour mean)
    interpolation of the pixels around them, as a studio seen behind the first dancer is
    smooth; 4 x max(H, W) Jacobi sweeps from the mean of the known pixels converge to well
    under 1/255 at the course's 32x64. (..., H, W, C), (..., H, W, 1) -> (..., H, W, C)."""
    known = 1 - hole
    mean = jnp.sum(image * known, axis=(-3, -2), keepdims=True) / jnp.maximum(
        jnp.sum(known, axis=(-3, -2), keepdims=True), 1)
    pad = [(0, 0)] * (image.ndim - 3) + [(1, 1), (1, 1), (0, 0)]

    def sweep(_, x):
        p = jnp.pad(x, pad, mode="edge")
        mean4 = (p[..., :-2, 1:-1, :] + p[..., 2:, 1:-1, :] + p[..., 1:-1, :-2, :] + p[..., 1:-1, 2:, :]) / 4
        return jnp.where(hole > 0, mean4, image)

    start = jnp.where(hole > 0, mean, image)
    return jax.lax.fori_loop(0, 4 * max(image.shape[-3], image.shape[-2]), sweep, start)


class Scene(NamedTuple):
    """What a video's frames take from its given first frame, computed once per video."""
    background: jax.Array  # the first frame (its dancer filled in with scene_fill)
    first_area: jax.Array  # `dancer_area` of the first pose


def scene_of(model: Lab4CVAE, first_frame, first_pose) -> Scene | None:
    """The `Scene` of videos starting at first_frame (B, H, W, 3) with first_pose, or None
    without copy_scene."""
    if not model.copy_scene:
        return None
    first_area = dancer_area(first_pose)
    background = first_frame
    if model.scene_fill:  # in float32 at any compute precision: 4 x max(H, W) sweeps of rounding
        background = harmonic_fill(first_frame.astype(jnp.float32), first_area.astype(jnp.float32))
    return Scene(jax.lax.stop_gradient(background).astype(first_frame.dtype), first_area)


def scene_gate(model: Lab4CVAE, scene: Scene | None, pose):
    """1 where the copied scene shows at this step, or None without copy_scene: away from
    the dancer in the current `pose` and, unless `scene_fill` removed it, in the first pose.
    The studio is static, so copying it keeps what 630 autoregressive redraws would wash
    out; leaving out an unfilled first dancer keeps it from staying behind as a ghost."""
    if not model.copy_scene:
        return None
    gate = 1 - dancer_area(pose)
    return gate if model.scene_fill else (1 - scene.first_area) * gate


class Lab4Inputs(NamedTuple):
    """One time step of a Lab4 rollout, time-major leading axis when stacked."""
    pose_feat: jax.Array  # features of the current pose p_t
    mu: jax.Array         # posterior moments of x_t
    logvar: jax.Array
    gate: jax.Array | None  # `scene_gate` of p_t with copy_scene, else None


class Lab4Terms(NamedTuple):
    """What the loss needs from one training rollout (time-major)."""
    preds: jax.Array     # (T-1, B, H, W, 3) predictions of frames 1..T-1
    targets: jax.Array   # (T-1, B, H, W, 3)
    mu: jax.Array        # (T-1, B, H, W, N)
    logvar: jax.Array
    pose_moments: tuple  # BatchNorm batch moments per time step, for the running averages


def encode_steps(model: Lab4CVAE, frames, poses, remat: bool):
    """For steps t = 1..T-1 of time-major frames and poses: features of x_t, features and
    BatchNorm moments of p_t, and (mu, logvar) of q(z | x_t, p_t); nothing here depends on
    a prediction. All steps at once, or under remat one step at a time, rematerialised:
    the backward pass then keeps one step's encoder activations instead of the clip's
    (XLA's plan of a reference-dims step at batch 32: 14.7 -> 4.8 GiB on CPU)."""
    def encode(frame, pose):
        feat = model.encode_frame(frame)
        pose_feat, moments = model.encode_pose(pose, use_running_average=False)
        return (feat, pose_feat, moments) + tuple(model.posterior_moments(feat, pose_feat))

    if not remat:
        return encode(frames[1:], poses[1:])
    # a time axis of one per step: BatchNorm moments are per time index either way
    per_step = jax.lax.map(lambda fp: jax.checkpoint(encode)(fp[0][None], fp[1][None]),
                           (frames[1:], poses[1:]))
    return jax.tree.map(lambda a: a[:, 0], per_step)


def training_rollout(model: Lab4CVAE, frames, poses, teacher, key, *, remat=False,
                     unroll=1, batched_wgrad=False) -> Lab4Terms:
    """Posterior rollout of a clip: frames/poses (B, T, H, W, 3), teacher (T-1, B).

    Everything that does not depend on a previous prediction (the encodings of every
    ground-truth frame and pose, the posterior) is computed for all steps at once outside
    the scan. The in-scan encoding of teacher-forced steps is not skipped with `lax.cond`:
    XLA CPU runs a conditional's backward pass far slower (benchmarks/NOTES.md,
    "Teacher-forced fast path").
    """
    frames, poses = time_major(frames), time_major(poses)
    _, pose_feat, moments, mu, logvar = encode_steps(model, frames, poses, remat)
    scene = scene_of(model, frames[0], poses[0])
    inputs = Lab4Inputs(pose_feat, mu, logvar, scene_gate(model, scene, poses[1:]))

    def step(state, prev_frame, weight, x: Lab4Inputs, key_t):
        z = reparameterize(x.mu, x.logvar, key_t)
        return state, model.decode(model.encode_frame(prev_frame), x.pose_feat, z, scene, x.gate), None

    _, preds, _ = rollout(step, frames[0], inputs, key, true_prev=frames[:-1], teacher=teacher,
                          remat=remat, unroll=unroll, batched_wgrad=batched_wgrad)
    return Lab4Terms(preds, frames[1:], mu, logvar, moments)


def teacher_forced_rollout(model: Lab4CVAE, frames, poses, key, *, remat=False, unroll=1,
                           batched_wgrad=False) -> Lab4Terms:
    """`training_rollout` with every step teacher-forced, where no step depends on another.

    Each frame is encoded once (the reference encodes x_{t-1} and x_t at every step) and
    the steps are decoded without a carry; z draws use the rollout engine's per-step keys,
    so the result equals `training_rollout(..., teacher=1)` up to float rounding. Steps are
    decoded one batch at a time (a scan), not all at once: on CPU the per-step tensors stay
    in cache (benchmarks/NOTES.md, "Teacher-forced fast path").
    """
    frames, poses = time_major(frames), time_major(poses)
    feat, pose_feat, moments, mu, logvar = encode_steps(model, frames, poses, remat)
    feat = jnp.concatenate([model.encode_frame(frames[:1]), feat])
    keys = jax.random.split(key, mu.shape[0])
    scene = scene_of(model, frames[0], poses[0])

    def step(_, x):
        prev_feat, pose_t, mu_t, logvar_t, key_t, gate = x
        return None, model.decode(prev_feat, pose_t, reparameterize(mu_t, logvar_t, key_t), scene, gate)

    _, preds = scan_steps(step, None, (feat[:-1], pose_feat, mu, logvar, keys, scene_gate(model, scene, poses[1:])),
                          remat=remat, unroll=unroll, batched_wgrad=batched_wgrad)
    return Lab4Terms(preds, frames[1:], mu, logvar, moments)


def generate(model: Lab4CVAE, first_frame, poses, key, *, bn_mode="running", z_mode="sample",
             remat=False):
    """Autoregressive generation: first_frame (B, H, W, 3), poses (B, T, H, W, 3).

    Returns (B, T, H, W, 3) with the given first frame at index 0. z is drawn from the
    prior N(0, I) (or set to its mean); pose features are computed inside the scan so
    memory does not grow with the video length beyond the output frames themselves.
    """
    b, _, h, w, _ = poses.shape
    use_running = bn_mode == "running"
    scene = scene_of(model, first_frame, poses[:, 0])

    def step(state, prev_frame, weight, pose, key_t):
        pose_feat, _ = model.encode_pose(pose, use_running_average=use_running)
        if z_mode == "mean":
            z = jnp.zeros((b, h, w, model.N_dim), prev_frame.dtype)
        else:
            z = jax.random.normal(key_t, (b, h, w, model.N_dim), prev_frame.dtype)
        return state, model.decode(model.encode_frame(prev_frame), pose_feat, z, scene,
                                   scene_gate(model, scene, pose)), None

    _, preds, _ = rollout(step, first_frame, time_major(poses)[1:], key, remat=remat)
    return jnp.concatenate([first_frame[:, None], time_major(preds)], axis=1)


# ----------------------------------------------------------------------- the family interface


def build(cfg, key) -> Lab4CVAE:
    return Lab4CVAE(cfg.F_dim, cfg.L_dim, cfg.N_dim, cfg.D_out_dim, output_sigmoid=cfg.output_sigmoid,
                    copy_scene=cfg.copy_scene, scene_fill=cfg.scene_fill, scene_alpha=cfg.scene_alpha,
                    rngs=nnx.Rngs(params=key))


def teacher_steps(cfg, batch) -> int:
    return batch[0].shape[1] - 1


def objective(model: Lab4CVAE, batch, teacher, key, beta, cfg):
    """(loss, metrics, pose BatchNorm moments): per-frame MSE + beta * KL, summed over the clip.

    teacher: (T-1, B) weights, or None when every step is teacher-forced (a faster program)."""
    frames, poses = batch
    kw = dict(remat=cfg.remat, unroll=cfg.scan_unroll, batched_wgrad=cfg.batched_wgrad)
    if teacher is None:  # the caller knows every step is teacher-forced
        terms = teacher_forced_rollout(model, frames, poses, key, **kw)
    else:
        terms = training_rollout(model, frames, poses, teacher, key, **kw)
    mse = jnp.sum(losses.mse_per_frame(terms.preds, terms.targets))
    kl = jnp.sum(losses.kl_per_frame(terms.mu, terms.logvar))
    loss = mse + beta * kl
    smooth = jnp.zeros(())
    if cfg.smooth_weight:
        smooth = losses.temporal_smoothness(terms.preds, terms.targets, frames[:, 0])
        loss = loss + cfg.smooth_weight * smooth
    metrics = {"loss": loss, "mse": mse, "kl": kl, "smooth": smooth}
    return loss, metrics, terms.pose_moments


def fold_batch_stats(model: Lab4CVAE, moments, batch) -> None:
    frames = batch[0]
    bn = model.pose_encoder.bn
    bn.mean[...], bn.var[...] = bn.updated_running_stats(
        *moments, count=frames.shape[0] * frames.shape[2] * frames.shape[3])


def predict_batch(model: Lab4CVAE, batch, key, cfg, z_mode=None):
    """The frames scored in validation: batch = (first frame, poses) -> frames 1..T-1."""
    first, poses = batch
    out = generate(model, first, poses, key, bn_mode=cfg.bn_mode, z_mode=z_mode or cfg.z_mode)
    return out[:, 1:]


DEFAULT_NUM_SAMPLES = 1
EVAL_OPTIONS = ("submission",)  # the course's Kaggle CSV of the test split


def load_data(cfg, log=print, train: bool = True):
    from cvae_jax.data.dance import load_dance
    return load_dance(cfg, log, splits=("train", "val") if train else ("val",))


def check_eval_options(cfg, options) -> None:
    from cvae_jax import lab4_evaluation
    lab4_evaluation.check_options(cfg, options)


def evaluate(restored, cfg, options, out, log=print) -> dict:
    from cvae_jax import lab4_evaluation
    return lab4_evaluation.evaluate(restored, cfg, options, out, log)


def restored(cfg, graphdef, params, batch_stats, meta, path):
    from cvae_jax.lab4_evaluation import Lab4Model
    return Lab4Model(cfg, graphdef, params, batch_stats, meta, path)
