"""The Lab4 options beyond the reference: clip augmentation, AdamW, a KL ramp that starts
above 0, the course preset that combines the last two, the scene copy and its refinements
(the first dancer filled in, an opacity over the scene)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import TINY_DIMS
from cvae_jax import schedules
from cvae_jax.config import preset
from cvae_jax.data import dance_folder
from cvae_jax.models import lab4
from cvae_jax.train_step import make_optimizer

B, T, H, W = 2, 4, 8, 16


def n_params(model) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))


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
    assert n_params(model) == 1_585_620 and cfg.optim.optimizer == "AdamW"
    tiny = cfg.replace(frame_H=H, frame_W=W, **TINY_DIMS, train_vi_len=T, val_vi_len=16, steps_per_epoch=2,
                       synthetic_train_videos=1, cache_dir=str(tmp_path / "cache"), save_root=str(tmp_path),
                       num_epoch=2, val_every=1, per_save=1, scan_unroll=1, tf_fast_path=False).validated()
    run = train_and_evaluate(tiny, log=lambda line: None)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["tfr"] for r in records] == pytest.approx([1.0, 0.8])
    assert records[0]["beta"] == pytest.approx(0.1) and records[1]["lr"] < records[0]["lr"]
    assert all(np.isfinite(r["val_psnr"]) for r in records)


def test_dancer_area_widens_each_inked_pixel_by_a_quarter_of_the_frame_height():
    pose = np.ones((H, W, 3), np.float32)
    assert not np.asarray(lab4.dancer_area(jnp.asarray(pose))).any()  # a white canvas: no dancer
    pose[4, 9] = (1.0, 0.5, 1.0)  # one faint skeleton pixel
    want = np.zeros((H, W, 1), np.float32)
    want[3:6, 8:11] = 1  # k = 2 * (H // 8) + 1 = 3
    np.testing.assert_array_equal(np.asarray(lab4.dancer_area(jnp.asarray(pose))), want)


def poses_with_a_walking_dancer(rng):
    """(B, T, H, W, 3) white pose images with a short dark stroke that moves right."""
    poses = np.ones((B, T, H, W, 3), np.float32)
    for t in range(T):
        poses[:, t, 2:6, 2 + 3 * t] = rng.uniform(0, 0.5, 3)
    return jnp.asarray(poses)


def test_copy_scene_adds_no_parameters_and_copies_the_first_frame_outside_the_dancer():
    """--copy_scene: the same parameters; each generated frame is the first frame exactly
    where neither the first nor the current pose has its dancer, and the generator's frame
    elsewhere (at step 1, from the same first frame, the reference model's frame)."""
    rng = np.random.default_rng(0)
    build = lambda copy_scene: lab4.Lab4CVAE(**TINY_DIMS, output_sigmoid=True, copy_scene=copy_scene,  # noqa: E731
                                             rngs=nnx.Rngs(params=jax.random.key(0)))
    plain, scene = build(False), build(True)
    assert n_params(scene) == n_params(plain)
    for a, b in zip(jax.tree.leaves(nnx.state(scene)), jax.tree.leaves(nnx.state(plain)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    first = jnp.asarray(rng.random((B, H, W, 3)), jnp.float32)
    poses = poses_with_a_walking_dancer(rng)
    got = np.asarray(lab4.generate(scene, first, poses, jax.random.key(1)))
    want = np.asarray(lab4.generate(plain, first, poses, jax.random.key(1)))
    first_area = lab4.dancer_area(poses[:, 0])
    scene_of = lab4.scene_of(scene, first, poses[:, 0])
    for t in range(1, T):
        gate = np.asarray(lab4.scene_gate(scene, scene_of, poses[:, t]))
        assert 0 < gate.mean() < 1 and set(np.unique(gate)) == {0.0, 1.0}
        # never where the dancer stood in the first frame (its ghost) or stands now
        assert not (gate * first_area).any() and not (gate * lab4.dancer_area(poses[:, t])).any()
        np.testing.assert_array_equal(np.where(gate == 1, got[:, t], 0), np.where(gate == 1, first, 0))
        assert not np.allclose(np.where(gate == 0, got[:, t], 0), np.where(gate == 0, first, 0))
    gate = np.asarray(lab4.scene_gate(scene, scene_of, poses[:, 1]))
    np.testing.assert_allclose(np.where(gate == 0, got[:, 1], 0), np.where(gate == 0, want[:, 1], 0), atol=1e-6)


def test_copy_scene_teacher_forced_fast_path_equals_the_rollout():
    rng = np.random.default_rng(1)
    model = lab4.Lab4CVAE(**TINY_DIMS, copy_scene=True, rngs=nnx.Rngs(params=jax.random.key(0)))
    frames, poses = jnp.asarray(rng.random((B, T, H, W, 3)), jnp.float32), poses_with_a_walking_dancer(rng)
    slow = lab4.training_rollout(model, frames, poses, jnp.ones((T - 1, B)), jax.random.key(2))
    fast = lab4.teacher_forced_rollout(model, frames, poses, jax.random.key(2))
    np.testing.assert_allclose(np.asarray(fast.preds), np.asarray(slow.preds), atol=1e-6)
    scene = lab4.scene_of(model, frames[:, :1], poses[:, :1])
    gate = np.asarray(lab4.scene_gate(model, scene, poses[:, 1:]))  # (B, T-1, H, W, 1)
    preds = np.moveaxis(np.asarray(fast.preds), 0, 1)
    np.testing.assert_array_equal(np.where(gate == 1, preds, 0), np.where(gate == 1, frames[:, :1], 0))


def build_lab4(seed=0, **extensions):
    return lab4.Lab4CVAE(**TINY_DIMS, output_sigmoid=True, **extensions, rngs=nnx.Rngs(params=jax.random.key(seed)))


def test_harmonic_fill_keeps_known_pixels_and_continues_a_smooth_studio_into_the_hole():
    """A linear shading is harmonic, so the fill of a hole inside it is the shading itself."""
    y, x = np.meshgrid(np.linspace(0, 1, H), np.linspace(0, 1, W), indexing="ij")
    image = np.stack([0.2 + 0.5 * x, 0.9 - 0.6 * y, 0.3 + 0.2 * x + 0.3 * y], -1).astype(np.float32)
    hole = np.zeros((H, W, 1), np.float32)
    hole[2:6, 4:11] = 1
    dancer = np.where(hole > 0, 0.0, image)  # a black dancer standing in the studio
    filled = np.asarray(lab4.harmonic_fill(jnp.asarray(dancer), jnp.asarray(hole)))
    np.testing.assert_array_equal(filled[hole[..., 0] == 0], image[hole[..., 0] == 0])
    np.testing.assert_allclose(filled, image, atol=2e-3)
    assert np.abs(dancer - image).max() > 0.2


def test_scene_fill_copies_the_filled_studio_everywhere_but_the_current_dancer():
    rng = np.random.default_rng(3)
    model = build_lab4(copy_scene=True, scene_fill=True)
    assert n_params(model) == n_params(build_lab4())
    first = jnp.asarray(rng.random((B, H, W, 3)), jnp.float32)
    poses = poses_with_a_walking_dancer(rng)
    got = np.asarray(lab4.generate(model, first, poses, jax.random.key(1)))
    scene = lab4.scene_of(model, first, poses[:, 0])
    first_area = np.asarray(scene.first_area)
    background = np.asarray(scene.background)
    np.testing.assert_array_equal(np.where(first_area == 0, background, 0), np.where(first_area == 0, first, 0))
    assert np.abs(np.where(first_area == 1, background - first, 0)).max() > 0.1  # the first dancer is gone
    for t in range(1, T):
        gate = np.asarray(lab4.scene_gate(model, scene, poses[:, t]))
        np.testing.assert_array_equal(gate, 1 - np.asarray(lab4.dancer_area(poses[:, t])))
        assert (gate * first_area).any()  # the first dancer's place is copied, filled in
        np.testing.assert_array_equal(np.where(gate == 1, got[:, t], 0), np.where(gate == 1, background, 0))


def test_scene_alpha_adds_one_output_channel_and_draws_over_the_filled_scene():
    rng = np.random.default_rng(4)
    plain, model = build_lab4(copy_scene=True, scene_fill=True), build_lab4(copy_scene=True, scene_fill=True,
                                                                             scene_alpha=True)
    assert n_params(model) - n_params(plain) == TINY_DIMS["D_out_dim"] // 8 + 1
    first = jnp.asarray(rng.random((B, H, W, 3)), jnp.float32)
    poses = poses_with_a_walking_dancer(rng)
    scene = lab4.scene_of(model, first, poses[:, 0])
    feat, (pose_feat, _) = model.encode_frame(first), model.encode_pose(poses[:, 1], True)
    z = jnp.zeros(feat.shape[:-1] + (TINY_DIMS["N_dim"],))
    raw = model.generator(model.fusion(jnp.concatenate([feat, pose_feat, z], -1)))
    alpha, drawn = jax.nn.sigmoid(raw[..., 3:]), jax.nn.sigmoid(raw[..., :3])
    gate = lab4.scene_gate(model, scene, poses[:, 1])
    want = gate * scene.background + (1 - gate) * (alpha * drawn + (1 - alpha) * scene.background)
    got = model.decode(feat, pose_feat, z, scene, gate)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    assert 0 < float(alpha.min()) and float(alpha.max()) < 1


@pytest.mark.parametrize("extensions", [dict(copy_scene=True, scene_fill=True),
                                        dict(copy_scene=True, scene_fill=True, scene_alpha=True)])
def test_scene_refinements_teacher_forced_fast_path_equals_the_rollout(extensions):
    rng = np.random.default_rng(6)
    model = build_lab4(**extensions)
    frames, poses = jnp.asarray(rng.random((B, T, H, W, 3)), jnp.float32), poses_with_a_walking_dancer(rng)
    slow = lab4.training_rollout(model, frames, poses, jnp.ones((T - 1, B)), jax.random.key(2))
    fast = lab4.teacher_forced_rollout(model, frames, poses, jax.random.key(2))
    np.testing.assert_allclose(np.asarray(fast.preds), np.asarray(slow.preds), atol=1e-6)


def test_scene_refinements_need_the_scene_copy():
    from cvae_jax.errors import ConfigError
    for flag in ("scene_fill", "scene_alpha"):
        with pytest.raises(ConfigError, match=f"--{flag} refines the scene copy: it needs --copy_scene"):
            preset("lab4").replace(**{flag: True}).validated()
    assert preset("lab4").arch.extensions() == () and preset("course").arch.extensions() == ()

