"""The rollout engine against hand-written loops, the Lab4 training rollout against a
per-frame loop written the way the reference trainer does it, teacher-forcing masks,
and the loss terms against closed forms and numerical integrals."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import random_model
from cvae_jax import losses
from cvae_jax.models import lab4
from cvae_jax.models.lab4 import reparameterize
from cvae_jax.rollout import rollout, teacher_forcing_mask

T, B, H, W, C = 6, 3, 2, 2, 1

# --------------------------------------------------------------------------- rollout engine


def toy_step(state, prev, weight, x_t, key_t):
    """pred = 0.5 * prev + x_t; reports its previous-frame input and key as aux."""
    return state + 1, prev * 0.5 + x_t, (prev, jax.random.key_data(key_t))


@pytest.fixture
def toy(rng):
    first = jnp.asarray(rng.normal(size=(B, H, W, C)), jnp.float32)
    xs = jnp.asarray(rng.normal(size=(T, B, H, W, C)), jnp.float32)
    true_prev = jnp.asarray(rng.normal(size=(T, B, H, W, C)), jnp.float32)
    return first, xs, true_prev


def python_loop(first, xs, true_prev, teacher):
    prev_pred, inputs, preds = np.asarray(first), [], []
    for t in range(T):
        w = np.asarray(teacher[t]).reshape(B, 1, 1, 1)
        prev = w * np.asarray(true_prev[t]) + (1 - w) * prev_pred
        prev_pred = prev * 0.5 + np.asarray(xs[t])
        inputs.append(prev)
        preds.append(prev_pred)
    return np.stack(inputs), np.stack(preds)


def run_toy(first, xs, true_prev, teacher, key=jax.random.key(0), **kw):
    state, preds, (inputs, keys) = rollout(toy_step, first, xs, key, true_prev=true_prev,
                                           teacher=teacher, state=jnp.int32(0), **kw)
    return state, preds, inputs, keys


def test_full_teacher_forcing_feeds_ground_truth(toy):
    first, xs, true_prev = toy
    state, preds, inputs, _ = run_toy(first, xs, true_prev, jnp.ones((T, B)))
    np.testing.assert_array_equal(inputs, true_prev)
    np.testing.assert_allclose(preds, true_prev * 0.5 + xs, rtol=1e-6)
    assert int(state) == T


def test_no_teacher_forcing_chains_predictions(toy):
    first, xs, true_prev = toy
    _, preds, inputs, _ = run_toy(first, xs, true_prev, jnp.zeros((T, B)))
    want_inputs, want_preds = python_loop(first, xs, true_prev, np.zeros((T, B)))
    np.testing.assert_allclose(inputs, want_inputs, rtol=1e-6)
    np.testing.assert_allclose(preds, want_preds, rtol=1e-6)
    np.testing.assert_array_equal(inputs[0], first)
    np.testing.assert_array_equal(inputs[1:], preds[:-1])
    # generation (no ground truth, no mask) is the same program
    _, gen_preds, _ = rollout(toy_step, first, xs, jax.random.key(0), state=jnp.int32(0))
    np.testing.assert_allclose(gen_preds, preds, rtol=1e-6)


@pytest.mark.parametrize("kind", ["blend", "per_time_batch"])
def test_mixed_masks_match_python_loop(toy, rng, kind):
    first, xs, true_prev = toy
    if kind == "blend":
        teacher = np.full((T, B), 0.3, np.float32)
    else:
        teacher = (rng.uniform(size=(T, B)) < 0.5).astype(np.float32)
        teacher[0] = [1, 0, 1]  # make sure both values occur
    _, preds, inputs, _ = run_toy(first, xs, true_prev, jnp.asarray(teacher))
    want_inputs, want_preds = python_loop(first, xs, true_prev, teacher)
    np.testing.assert_allclose(inputs, want_inputs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(preds, want_preds, rtol=1e-5, atol=1e-6)


def test_keys_are_split_per_step(toy):
    first, xs, true_prev = toy
    key = jax.random.key(7)
    _, _, _, keys = run_toy(first, xs, true_prev, jnp.zeros((T, B)), key=key)
    np.testing.assert_array_equal(keys, jax.random.key_data(jax.random.split(key, T)))
    assert len({tuple(k) for k in np.asarray(keys)}) == T


def noisy_step(state, prev, weight, x_t, key_t):
    return state, prev * 0.5 + x_t + jax.random.normal(key_t, x_t.shape), None


def test_same_key_same_rollout(toy):
    first, xs, true_prev = toy

    def go(key):
        return rollout(noisy_step, first, xs, key, true_prev=true_prev, teacher=jnp.zeros((T, B)))[1]

    np.testing.assert_array_equal(go(jax.random.key(1)), go(jax.random.key(1)))
    assert not np.allclose(go(jax.random.key(1)), go(jax.random.key(2)))


@pytest.mark.parametrize("kw", [dict(unroll=3), dict(unroll=T), dict(remat=True),
                                dict(remat=True, unroll=2)])
def test_unroll_and_remat_do_not_change_results(toy, rng, kw):
    first, xs, true_prev = toy
    teacher = jnp.asarray((rng.uniform(size=(T, B)) < 0.5), jnp.float32)

    def loss(xs, **kw):
        preds = rollout(noisy_step, first, xs, jax.random.key(3), true_prev=true_prev,
                        teacher=teacher, **kw)[1]
        return jnp.sum(jnp.sin(preds)), preds

    (l0, p0), g0 = jax.value_and_grad(loss, has_aux=True)(xs)
    (l1, p1), g1 = jax.value_and_grad(loss, has_aux=True)(xs, **kw)
    np.testing.assert_allclose(p1, p0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g1, g0, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- Lab4 training rollout

LT, LB, LH, LW = 5, 2, 8, 16


@pytest.fixture(scope="module")
def lab4_setup():
    r = np.random.default_rng(21)
    model = random_model(seed=9)
    frames = jnp.asarray(r.uniform(size=(LB, LT, LH, LW, 3)), jnp.float32)
    poses = jnp.asarray(r.uniform(size=(LB, LT, LH, LW, 3)), jnp.float32)
    return model, frames, poses


def reference_loop(model, frames, poses, teacher, key):
    """The reference trainer's per-frame loop: at t = 1..T-1 encode the previous input
    frame, encode the current pose (batch statistics), take the posterior of the current
    frame and pose, sample z with the engine's key for step t-1, decode."""
    keys = jax.random.split(key, LT - 1)
    prev_pred = frames[:, 0]
    preds, mus, logvars, means, vars_ = [], [], [], [], []
    for t in range(1, LT):
        w = teacher[t - 1].reshape(LB, 1, 1, 1)
        prev = w * frames[:, t - 1] + (1 - w) * prev_pred
        pose_feat, (mean, var) = model.encode_pose(poses[:, t], use_running_average=False)
        mu, logvar = model.posterior_moments(model.encode_frame(frames[:, t]), pose_feat)
        z = reparameterize(mu, logvar, keys[t - 1])
        prev_pred = model.decode(model.encode_frame(prev), pose_feat, z)
        for lst, v in zip((preds, mus, logvars, means, vars_), (prev_pred, mu, logvar, mean, var)):
            lst.append(v)
    return tuple(jnp.stack(v) for v in (preds, mus, logvars, means, vars_))


@pytest.fixture(scope="module")
def lab4_pair(lab4_setup):
    model, frames, poses = lab4_setup
    engine = jax.jit(lambda t, k: lab4.training_rollout(model, frames, poses, t, k))
    loop = jax.jit(lambda t, k: reference_loop(model, frames, poses, t, k))
    return engine, loop


@pytest.mark.parametrize("mask", ["ones", "zeros", "mixed"])
def test_lab4_rollout_equals_per_frame_loop(lab4_pair, mask):
    engine, loop = lab4_pair
    teacher = {"ones": np.ones((LT - 1, LB)), "zeros": np.zeros((LT - 1, LB)),
               "mixed": np.array([[1, 0], [0, 1], [0, 0], [1, 1]])}[mask]
    teacher = jnp.asarray(teacher, jnp.float32)
    key = jax.random.key(4)
    terms = engine(teacher, key)
    preds, mu, logvar, mean, var = loop(teacher, key)
    tol = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(terms.preds, preds, **tol)
    np.testing.assert_allclose(terms.mu, mu, **tol)
    np.testing.assert_allclose(terms.logvar, logvar, **tol)
    np.testing.assert_allclose(terms.pose_moments[0][:, 0], mean[:, 0], **tol)
    np.testing.assert_allclose(terms.pose_moments[1][:, 0], var[:, 0], **tol)
    # a different key draws a different z, so the check above is not vacuous
    assert not np.allclose(engine(teacher, jax.random.key(5)).preds, preds, atol=1e-4)


def test_teacher_mask_changes_lab4_predictions(lab4_pair):
    engine, _ = lab4_pair
    key = jax.random.key(4)
    ones = engine(jnp.ones((LT - 1, LB)), key).preds
    zeros = engine(jnp.zeros((LT - 1, LB)), key).preds
    np.testing.assert_allclose(ones[0], zeros[0], rtol=1e-5, atol=1e-6)  # step 1 sees x_0 either way
    assert not np.allclose(ones[1:], zeros[1:], atol=1e-4)


# --------------------------------------------------------------------------- teacher-forcing masks


def mask(mode, ratio, epoch_seed=0, step_seed=0, n=8, b=16):
    return np.asarray(teacher_forcing_mask(mode, ratio, jax.random.key(epoch_seed),
                                           jax.random.key(step_seed), n, b))


def test_epoch_mode_is_one_draw_for_everything():
    draws = [mask("epoch", 0.5, epoch_seed=s) for s in range(40)]
    for m in draws:
        assert m.shape == (8, 16) and m.dtype == np.float32
        assert np.unique(m).size == 1
    assert {float(m[0, 0]) for m in draws} == {0.0, 1.0}
    # decided by the epoch key alone: the per-step key does not matter
    np.testing.assert_array_equal(mask("epoch", 0.5, 3, 0), mask("epoch", 0.5, 3, 99))
    assert float(mask("epoch", 0.5, 3)[0, 0]) == float(jax.random.uniform(jax.random.key(3)) < 0.5)


def test_clip_mode_is_constant_over_time_and_varies_over_batch():
    m = mask("clip", 0.5, b=64)
    assert (m == m[:1]).all()
    assert 0 < m[0].mean() < 1
    np.testing.assert_array_equal(mask("clip", 0.5, 0, 5, b=64), mask("clip", 0.5, 9, 5, b=64))
    assert not np.array_equal(mask("clip", 0.5, 0, 5, b=64), mask("clip", 0.5, 0, 6, b=64))


def test_frame_mode_varies_over_time_and_batch():
    m = mask("frame", 0.3, n=64, b=64)
    assert not (m == m[:1]).all() and not (m == m[:, :1]).all()
    assert abs(m.mean() - 0.3) < 0.05


def test_blend_mode_is_the_ratio():
    np.testing.assert_array_equal(mask("blend", 0.37), np.full((8, 16), 0.37, np.float32))


@pytest.mark.parametrize("mode", ["epoch", "clip", "frame", "blend"])
def test_ratio_edges(mode):
    for seed in range(5):
        assert (mask(mode, 0.0, seed, seed) == 0).all()
        assert (mask(mode, 1.0, seed, seed) == 1).all()


def test_ratio_may_be_traced():
    f = jax.jit(lambda r: teacher_forcing_mask("frame", r, jax.random.key(0), jax.random.key(1), 4, 4))
    assert (np.asarray(f(1.0)) == 1).all() and (np.asarray(f(0.0)) == 0).all()


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="tf_mode"):
        mask("sometimes", 0.5)


# --------------------------------------------------------------------------- losses


def test_mse_per_frame(rng):
    p, t = rng.normal(size=(2, 4, 3, 5, 6, 3))
    np.testing.assert_allclose(losses.mse_per_frame(jnp.asarray(p), jnp.asarray(t)),
                               ((p - t) ** 2).reshape(4, -1).mean(1), rtol=1e-5)


def numeric_kl(mu_q, var_q, mu_p=0.0, var_p=1.0):
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) by quadrature on a dense grid."""
    sd = np.sqrt(var_q)
    x = np.linspace(mu_q - 12 * sd, mu_q + 12 * sd, 20001)
    log_q = -0.5 * np.log(2 * np.pi * var_q) - (x - mu_q) ** 2 / (2 * var_q)
    log_p = -0.5 * np.log(2 * np.pi * var_p) - (x - mu_p) ** 2 / (2 * var_p)
    return np.trapezoid(np.exp(log_q) * (log_q - log_p), x)


def test_kl_per_frame_closed_form_vs_numeric(rng):
    shape = (2, 3, 2, 2)  # (T, B, ...)
    mu, logvar = rng.normal(size=shape), rng.normal(scale=0.7, size=shape)
    numeric = np.vectorize(numeric_kl)(mu, np.exp(logvar))
    want = numeric.reshape(2, -1).sum(1) / 3  # summed over elements, divided by the batch
    got = losses.kl_per_frame(jnp.asarray(mu, jnp.float32), jnp.asarray(logvar, jnp.float32))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert (np.asarray(losses.kl_per_frame(jnp.zeros(shape), jnp.zeros(shape))) == 0).all()


def test_kl_gaussians(rng):
    shape = (2, 3, 2, 2)
    mu_q, lv_q, mu_p, lv_p = (rng.normal(scale=0.7, size=shape) for _ in range(4))
    f32 = lambda *a: [jnp.asarray(x, jnp.float32) for x in a]  # noqa: E731
    # a N(0, I) prior reduces it to the reference KL
    np.testing.assert_allclose(losses.kl_gaussians_per_frame(*f32(mu_q, lv_q, 0 * mu_q, 0 * lv_q)),
                               losses.kl_per_frame(*f32(mu_q, lv_q)), rtol=1e-5)
    numeric = np.vectorize(numeric_kl)(mu_q, np.exp(lv_q), mu_p, np.exp(lv_p))
    np.testing.assert_allclose(losses.kl_gaussians_per_frame(*f32(mu_q, lv_q, mu_p, lv_p)),
                               numeric.reshape(2, -1).sum(1) / 3, rtol=1e-4)
    np.testing.assert_allclose(losses.kl_gaussians_per_frame(*f32(mu_q, lv_q, mu_q, lv_q)), 0, atol=1e-6)


def test_temporal_smoothness(rng):
    targets = jnp.asarray(rng.uniform(size=(4, 2, 3, 5, 3)), jnp.float32)
    first = jnp.asarray(rng.uniform(size=(2, 3, 5, 3)), jnp.float32)
    assert float(losses.temporal_smoothness(targets, targets, first)) == 0.0
    # a constant offset only breaks the first difference (from the given frame): c^2 once
    assert float(losses.temporal_smoothness(targets + 0.1, targets, first)) == pytest.approx(0.01, rel=1e-4)
    noisy = targets + jnp.asarray(rng.normal(scale=0.05, size=targets.shape), jnp.float32)
    assert float(losses.temporal_smoothness(noisy, targets, first)) > 0


# --------------------------------------------------------------------------- teacher-forced path


@pytest.fixture(scope="module")
def lab4_loss_and_grads(lab4_setup):
    """(jitted (params, teacher) -> ((loss, aux), grads) of `lab4.objective`, params): one
    jitted function, so every teacher mask of the same shape reuses one compiled program."""
    model, frames, poses = lab4_setup
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    cfg = preset_cfg()

    @jax.jit
    def loss_and_grads(params, teacher):
        def loss(params):
            out = lab4.objective(nnx.merge(graphdef, params, rest), (frames, poses), teacher,
                                 jax.random.key(3), 0.3, cfg)
            return out[0], out
        return jax.value_and_grad(loss, has_aux=True)(params)

    return loss_and_grads, params


def test_lab4_rollout_gradients_are_finite(lab4_loss_and_grads):
    """A mixed teacher mask (forced, free and both in one step) gives every module a finite
    gradient, and gradients unlike the all-forced ones (the masks reach the rollout)."""
    loss_and_grads, params = lab4_loss_and_grads
    teacher = jnp.asarray([[1, 0], [0, 1], [0, 0], [1, 1]], jnp.float32)
    g = loss_and_grads(params, teacher)[1]
    for name in ("frame_encoder", "pose_encoder", "posterior", "fusion", "generator"):
        leaves = jax.tree_util.tree_leaves(g[name])
        assert all(np.isfinite(x).all() for x in leaves), name
        assert sum(float(jnp.sum(jnp.abs(x))) for x in leaves) > 0, f"{name} gets no gradient"
    forced = loss_and_grads(params, jnp.ones((LT - 1, LB), jnp.float32))[1]
    assert not all(np.allclose(a, b, rtol=2e-4, atol=1e-6)
                   for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(forced)))


def test_teacher_forced_path_equals_general_rollout(lab4_loss_and_grads):
    """teacher=None (every step teacher-forced: no scan carry, each frame encoded once)
    gives the general rollout's loss, gradients and BatchNorm moments."""
    loss_and_grads, params = lab4_loss_and_grads
    (l0, (_, m0, mom0)), g0 = loss_and_grads(params, jnp.ones((LT - 1, LB), jnp.float32))
    (l1, (_, m1, mom1)), g1 = loss_and_grads(params, None)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves((g1, mom1)), jax.tree_util.tree_leaves((g0, mom0))):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    # the comparison can tell the paths apart (the free-running run is the same program)
    g_free = loss_and_grads(params, jnp.zeros((LT - 1, LB), jnp.float32))[1]
    assert not all(np.allclose(a, b, rtol=2e-4, atol=1e-6)
                   for a, b in zip(jax.tree_util.tree_leaves(g_free), jax.tree_util.tree_leaves(g1)))


def preset_cfg():
    from cvae_jax.config import preset
    return preset("cpu").replace(**{k: v for k, v in
                                    dict(F_dim=8, L_dim=8, N_dim=4, D_out_dim=16).items()},
                                 scan_unroll=1, smooth_weight=0.0)


@pytest.mark.parametrize("fast", [True, False])
def test_tf_fast_path_flag_decides_the_program(fast):
    """--no-tf_fast_path leaves one gradient program (no conditional) in the train step."""
    from cvae_jax import checkpointing
    from cvae_jax.train_step import Schedule, make_train_step
    cfg = preset_cfg().replace(frame_H=LH, frame_W=LW, batch_size=LB, train_vi_len=LT, tf_fast_path=fast)
    graphdef, state = checkpointing.abstract_state(cfg)  # shapes suffice
    batch = tuple(jnp.zeros((LB, LT, LH, LW, 3), jnp.float32) for _ in range(2))
    sched = Schedule(*(jnp.float32(v) for v in (1e-3, 1.0, 1.0)))
    text = make_train_step(graphdef, cfg).lower(state, batch, sched, jax.random.key(1),
                                                jax.random.key(2)).as_text()
    assert ("stablehlo.case" in text) == fast


@pytest.mark.parametrize("option", [dict(remat=True), dict(batched_wgrad=False)], ids=["remat", "per_step_wgrad"])
@pytest.mark.parametrize("teacher", [None, [[1, 0], [0, 1], [0, 0], [1, 1]]], ids=["forced", "mixed"])
def test_lab4_execution_options_keep_loss_gradients_and_moments(lab4_setup, lab4_loss_and_grads,
                                                                 teacher, option):
    """--remat (the encoders step by step, each step recomputed in the backward pass) and
    --no-batched_wgrad (each step's 1x1 weight gradients on their own) change no number
    of the objective."""
    model, frames, poses = lab4_setup
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    loss_and_grads, params = lab4_loss_and_grads
    teacher = None if teacher is None else jnp.asarray(teacher, jnp.float32)
    cfg = preset_cfg().replace(**option)

    def loss(params):
        out = lab4.objective(nnx.merge(graphdef, params, rest), (frames, poses), teacher, jax.random.key(3), 0.3, cfg)
        return out[0], out
    (l1, (_, _, mom1)), g1 = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    (l0, (_, _, mom0)), g0 = loss_and_grads(params, teacher)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves((g1, mom1)), jax.tree_util.tree_leaves((g0, mom0))):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
