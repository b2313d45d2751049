"""The Lab4 levers beyond the reference: the first-frame mask, clip augmentation, AdamW, a
KL ramp that starts above 0, and the course preset that combines the last three."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import TINY_DIMS, random_model
from cvae_jax import schedules
from cvae_jax.config import preset
from cvae_jax.data import dance_folder
from cvae_jax.models import lab4
from cvae_jax.train_step import make_optimizer

B, T, H, W = 2, 4, 8, 16


def n_params(model) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(0)
    return tuple(jnp.asarray(rng.uniform(0, 1, (B, T, H, W, 3)), jnp.float32) for _ in range(2))


def masked(logit: float, cue_weight: float = 0.0):
    """A toy model whose mask is sigmoid(logit + cue_weight * skeleton area of the first pose)."""
    model = random_model(seed=1, output_sigmoid=True, first_frame_mask=True)
    kernel = jnp.zeros_like(model.first_frame_mask.kernel[...])
    model.first_frame_mask.kernel[...] = kernel.at[..., -1, 0].set(cue_weight)  # the cue is the last input
    model.first_frame_mask.bias[...] = jnp.full_like(model.first_frame_mask.bias[...], logit)
    return model


def test_first_frame_mask_is_one_head_of_d_over_8_plus_5_params():
    ref = nnx.eval_shape(lambda: lab4.Lab4CVAE(**TINY_DIMS, rngs=nnx.Rngs(0)))
    ext = nnx.eval_shape(lambda: lab4.Lab4CVAE(**TINY_DIMS, first_frame_mask=True, rngs=nnx.Rngs(0)))
    assert n_params(ext) - n_params(ref) == TINY_DIMS["D_out_dim"] // 8 + 5


def test_a_closed_mask_copies_the_first_frame_in_training_and_generation(clip):
    """Mask at 1: both training programs predict the clip's first frame at every step, and
    generation repeats the given first frame."""
    frames, poses = clip
    model = masked(40.0)
    want = jnp.broadcast_to(frames[:, 0], (T - 1, B, H, W, 3))
    terms = lab4.training_rollout(model, frames, poses, jnp.zeros((T - 1, B)), jax.random.key(0))
    np.testing.assert_allclose(terms.preds, want, atol=1e-6)
    fast = lab4.teacher_forced_rollout(model, frames, poses, jax.random.key(0))
    np.testing.assert_allclose(fast.preds, want, atol=1e-6)
    out = lab4.generate(model, frames[:, 0], poses, jax.random.key(1))
    np.testing.assert_allclose(out, jnp.broadcast_to(frames[:, :1], out.shape), atol=1e-6)


def test_skeleton_area_widens_the_first_poses_ink_by_a_quarter_of_the_height():
    pose = np.ones((1, 32, 64, 3), np.float32)
    pose[0, 10, 20] = (0.0, 1.0, 0.0)  # one green skeleton pixel on the white canvas
    area = np.asarray(lab4.skeleton_area(jnp.asarray(pose)))[0, ..., 0]
    assert area.sum() == 81 and area[6:15, 16:25].all()  # 9 x 9 around it at 32 px
    assert lab4.skeleton_area(jnp.ones((2, 4, 8, 16, 3))).max() == 0  # a blank canvas


def test_the_mask_can_leave_out_where_the_first_dancer_stood(clip):
    """The skeleton cue reaches the mask: the first frame is copied away from the first
    pose's skeleton and the generated frame is kept around it, so no ghost is copied."""
    frames, poses = clip
    first_pose = np.ones((B, H, W, 3), np.float32)
    first_pose[:, 4, 3] = 0.0  # skeleton ink at (4, 3): its area is rows 3-5, columns 2-4
    model = masked(20.0, cue_weight=-40.0)
    args = (model.encode_frame(frames[:, 1]), model.encode_pose(poses[:, 1], True)[0],
            jnp.zeros((B, H, W, TINY_DIMS["N_dim"])))
    out = model.decode(*args, frames[:, 0], jnp.asarray(first_pose))
    generated = masked(-40.0).decode(*args, frames[:, 0], jnp.asarray(first_pose))
    np.testing.assert_allclose(out[:, 3:6, 2:5], generated[:, 3:6, 2:5], atol=1e-6)
    np.testing.assert_allclose(out[:, :, 8:], frames[:, 0, :, 8:], atol=1e-6)


def test_first_frame_mask_keeps_the_teacher_forced_fast_path_exact(clip):
    """With the mask half open (first and generated frames mixed), the all-teacher-forced
    program's loss is the general rollout's."""
    frames, poses = clip
    model = masked(0.0, cue_weight=-1.0)
    cfg = preset("cpu").replace(**TINY_DIMS, first_frame_mask=True, scan_unroll=1)
    fast = lab4.objective(model, (frames, poses), None, jax.random.key(3), 0.0, cfg)[0]
    general = lab4.objective(model, (frames, poses), jnp.ones((T - 1, B)), jax.random.key(3), 0.0, cfg)[0]
    np.testing.assert_allclose(fast, general, rtol=1e-5)


def test_augmentation_moves_frame_and_pose_together_and_replays_per_epoch():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (64, H, W, 3), dtype=np.uint8)

    def epoch(augment, e):
        return list(dance_folder.epoch_batches(frames, frames.copy(), T, B, 7, e, 1.0, augment))

    plain = epoch("none", 0)
    for augment in ("flip", "flip_shift"):
        batches = epoch(augment, 0)
        assert all(np.array_equal(f, p) for f, p in batches)  # pose stays on the dancer
        assert all(f.shape == g.shape for (f, _), (g, _) in zip(batches, plain))
        assert any(not np.array_equal(f, g) for (f, _), (g, _) in zip(batches, plain))
        assert all(np.array_equal(f, g) for (f, _), (g, _) in zip(batches, epoch(augment, 0)))
        assert any(not np.array_equal(f, g) for (f, _), (g, _) in zip(batches, epoch(augment, 1)))
    draws = dance_folder.augment_draws("flip_shift", np.random.default_rng(1), 500, (32, 64))
    assert set(draws[:, 0]) == {0, 1} and draws[:, 1].min() == -2 and draws[:, 1].max() == 2
    assert draws[:, 2].min() == -4 and draws[:, 2].max() == 4


def test_augment_clip_flips_then_shifts_repeating_the_border():
    clip = np.arange(2 * 3 * 4).reshape(1, 3, 4, 2).astype(np.float32)
    flipped = dance_folder.augment_clip(clip, 1, 0, 0)
    np.testing.assert_array_equal(flipped[0, :, 0], clip[0, :, 3])
    right = dance_folder.augment_clip(clip, 0, 0, 1)  # content one column right
    np.testing.assert_array_equal(right[0, :, 1:], clip[0, :, :3])
    np.testing.assert_array_equal(right[0, :, 0], clip[0, :, 0])
    up = dance_folder.augment_clip(clip, 0, -1, 0)  # content one row up
    np.testing.assert_array_equal(up[0, :2], clip[0, 1:])
    np.testing.assert_array_equal(up[0, 2], clip[0, 2])


def test_adamw_decays_weights_by_lr_times_decay_and_adam_is_unchanged():
    params = {"w": jnp.full((3,), 2.0)}
    zero = {"w": jnp.zeros((3,))}
    adamw = make_optimizer(preset("lab4").replace(optim="AdamW", weight_decay=0.1, grad_clip=0.0))
    update, _ = adamw.update(zero, adamw.init(params), params)
    np.testing.assert_allclose(update["w"], 0.2)  # the step applies -lr * update
    default = make_optimizer(preset("lab4").replace(optim="AdamW", grad_clip=0.0))
    np.testing.assert_allclose(default.update(zero, default.init(params), params)[0]["w"], 0.02)
    adam = make_optimizer(preset("lab4").replace(grad_clip=0.0))
    np.testing.assert_allclose(adam.update(zero, adam.init(params), params)[0]["w"], 0.0)


def test_weight_decay_is_refused_with_adam():
    from cvae_jax.errors import ConfigError
    with pytest.raises(ConfigError, match="--weight_decay needs --optim AdamW"):
        preset("lab4").replace(weight_decay=0.01).validated()


@pytest.mark.parametrize("kind", ["Cyclical", "Monotonic"])
def test_kl_ramp_starts_at_kl_anneal_start(kind):
    betas = [schedules.kl_beta(kind, t, 20, 2, 0.5, start=0.25) for t in range(20)]
    assert betas[0] == 0.25 and betas[5] == pytest.approx(0.25 + 5 * 0.75 / 5) and max(betas) == 1.0
    assert min(betas) == 0.25


def test_course_preset_is_the_reference_model_and_trains(tmp_path):
    from cvae_jax.training import train_and_evaluate
    cfg = preset("course")
    model = nnx.eval_shape(lambda: lab4.build(cfg, jax.random.key(0)))
    assert n_params(model) == 1_585_620 and not cfg.first_frame_mask and cfg.optim.optimizer == "AdamW"
    tiny = cfg.replace(frame_H=H, frame_W=W, **TINY_DIMS, train_vi_len=T, val_vi_len=16, steps_per_epoch=2,
                       synthetic_train_videos=1, cache_dir=str(tmp_path / "cache"), save_root=str(tmp_path),
                       num_epoch=2, val_every=1, per_save=1, scan_unroll=1, tf_fast_path=False).validated()
    run = train_and_evaluate(tiny, log=lambda line: None)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["tfr"] for r in records] == pytest.approx([1.0, 0.8])
    assert records[0]["beta"] == pytest.approx(0.1) and records[1]["lr"] < records[0]["lr"]
    assert all(np.isfinite(r["val_psnr"]) for r in records)
