"""SVG model: reference parameter counts, shapes, the rollout's rules, KL, BatchNorm.

Training steps are compiled in test_svg_training.py only (one program for all its runs);
the BatchNorm running statistics are tested there, on a trained run."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cvae_jax import losses
from cvae_jax.config import preset
from cvae_jax.layers import count_params
from cvae_jax.models import svg
from cvae_jax.models.lstm import LSTMCell
from cvae_jax.train_step import init_state, make_predict

TINY = dict(vgg_width=4, g_dim=8, z_dim=3, rnn_size=8, batch_size=2, n_past=2, n_future=3, scan_unroll=1)


def tiny_cfg(**changes):
    return preset("cpu", "svg").replace(**{**TINY, **changes}).validated()


def tiny_model(seed=0, **changes):
    return svg.build(tiny_cfg(**changes), jax.random.key(seed))


def visible(params):
    """SVG's N(0, 0.02) init makes a fresh network's output ~0.5 everywhere, with input
    effects below float32 resolution; 3x larger weights make the wiring visible."""
    return jax.tree.map(lambda p: 3 * p, params)


def clip(rng, b=2, t=5):
    return (rng.random((b, t, 64, 64, 3), dtype=np.float32), rng.random((b, t, 7), dtype=np.float32))


def test_parameter_counts_match_the_reference():
    model = nnx.eval_shape(lambda: svg.build(preset("bair").replace(prior="learned"), jax.random.key(0)))
    assert count_params(model.encoder) == 8_689_600
    assert count_params(model.decoder) == 11_822_659
    assert count_params(model.frame_predictor) == 1_137_024  # input g + z + 7 = 199
    assert count_params(model.posterior) == 592_256
    assert count_params(model.prior) == 592_256
    fixed = nnx.eval_shape(lambda: svg.build(preset("bair"), jax.random.key(0)))
    assert fixed.prior is None
    assert count_params(fixed) == 8_689_600 + 11_822_659 + 1_137_024 + 592_256  # 22.24 M


def test_encoder_decoder_shapes():
    model = tiny_model()
    x = jnp.zeros((3, 64, 64, 3))
    h, skips, moments = model.encoder(x, True)
    assert h.shape == (3, 8)
    assert [s.shape for s in skips] == [(3, 64, 64, 4), (3, 32, 32, 8), (3, 16, 16, 16), (3, 8, 8, 32)]
    assert len(moments) == len(model.encoder.batchnorms())
    out, dec_m = model.decoder(h, skips, True)
    assert out.shape == (3, 64, 64, 3)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert len(dec_m) == len(model.decoder.batchnorms())
    with pytest.raises(ValueError, match="64x64"):
        model.encoder(jnp.zeros((1, 32, 32, 3)), True)


def test_lstm_cell_matches_torch_formula(rng):
    cell = LSTMCell(5, 4, rngs=nnx.Rngs(params=jax.random.key(1)))
    x, h, c = rng.standard_normal((2, 5)), rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    w = {k: np.asarray(getattr(cell, k)[...]) for k in ("w_ih", "w_hh", "b_ih", "b_hh")}
    gates = x @ w["w_ih"] + w["b_ih"] + h @ w["w_hh"] + w["b_hh"]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    i, f, g, o = np.split(gates, 4, axis=-1)
    c_new = sig(f) * c + sig(i) * np.tanh(g)
    out, (h2, c2) = cell(jnp.asarray(x, jnp.float32), (jnp.asarray(h, jnp.float32), jnp.asarray(c, jnp.float32)))
    np.testing.assert_allclose(c2, c_new, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, sig(o) * np.tanh(c_new), rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(w["w_ih"]) <= 0.5)  # torch default: U(+-1/sqrt(hidden))


def test_kl_against_closed_form():
    mu_q, logvar_q = jnp.array([[[1.0, -0.5]]]), jnp.log(jnp.array([[[0.25, 2.0]]]))
    mu_p, logvar_p = jnp.array([[[0.5, 0.0]]]), jnp.log(jnp.array([[[1.0, 0.5]]]))
    expected = sum(np.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5
                   for mq, sq, mp, sp in [(1.0, 0.5, 0.5, 1.0), (-0.5, np.sqrt(2), 0.0, np.sqrt(0.5))])
    np.testing.assert_allclose(losses.kl_gaussians_per_frame(mu_q, logvar_q, mu_p, logvar_p), [expected], rtol=1e-5)
    zeros = jnp.zeros_like(mu_q)
    np.testing.assert_allclose(losses.kl_gaussians_per_frame(mu_q, logvar_q, zeros, zeros),
                               losses.kl_per_frame(mu_q, logvar_q), rtol=1e-6)


def test_skip_refresh_rule():
    rule = lambda **kw: np.asarray(svg._take_skip(5, 2, **kw)).tolist()  # noqa: E731
    assert rule(last_frame_skip=False, skip_compat=False) == [True, True, False, False, False]
    assert rule(last_frame_skip=False, skip_compat=True) == [True, False, False, False, False]
    assert rule(last_frame_skip=True, skip_compat=False) == [True] * 5


def test_skip_source_follows_the_refresh_rule():
    source = lambda **kw: svg._skip_source(svg._take_skip(5, 2, **kw)).tolist()  # noqa: E731
    assert source(last_frame_skip=False, skip_compat=False) == [0, 1, 1, 1, 1]
    assert source(last_frame_skip=False, skip_compat=True) == [0, 0, 0, 0, 0]
    assert source(last_frame_skip=True, skip_compat=False) == [0, 1, 2, 3, 4]
    assert svg._skip_source(svg._take_skip(3, 1, False, True)).tolist() == [-1, -1, -1]


@pytest.mark.parametrize("changes", [{}, {"last_frame_skip": True, "prior": "learned"},
                                     {"skip_compat": True, "n_past": 1}])
def test_teacher_forced_path_equals_general_rollout(rng, changes):
    """teacher=None (batched encoder and decoder, only the LSTMs in the scan) gives the
    per-step rollout's loss, every gradient and every BatchNorm moment."""
    cfg = tiny_cfg(**changes)
    graphdef, params, rest = nnx.split(svg.build(cfg, jax.random.key(0)), nnx.Param, ...)
    params = visible(params)
    batch = clip(rng, b=3, t=5)

    @jax.jit
    def loss_and_grads(params, teacher):
        def loss(params):
            out = svg.objective(nnx.merge(graphdef, params, rest), batch, teacher, jax.random.key(3), 0.3, cfg)
            return out[0], out
        return jax.value_and_grad(loss, has_aux=True)(params)

    (l0, (_, m0, mom0)), g0 = loss_and_grads(params, jnp.ones((4, 3), jnp.float32))
    (l1, (_, m1, mom1)), g1 = loss_and_grads(params, None)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    np.testing.assert_allclose(m1["kl"], m0["kl"], rtol=1e-5)
    assert jax.tree.structure(mom1) == jax.tree.structure(mom0)
    # Moments agree to float32 summation order: measured up to 1.9e-6 absolute (2.5e-4
    # relative) on an entry of 7.7e-3 once XLA's CPU emitters changed the reductions' order.
    for a, b in zip(jax.tree_util.tree_leaves(mom1), jax.tree_util.tree_leaves(mom0)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # Gradients agree to rounding, amplified: the scaled-up weights saturate some tanh
    # units (|h| ~ 1 - 1e-6), whose gradient 1 - h^2 is then only a few bits deep
    # (measured: ~0.4% relative; ~2e-6 at the real init; a wrong skip frame gives >10%).
    norm = lambda t: float(np.sqrt(sum(np.vdot(x, x) for x in jax.tree_util.tree_leaves(t))))  # noqa: E731
    for part in g0:
        assert norm(jax.tree.map(np.subtract, g1[part], g0[part])) <= 2e-2 * norm(g0[part]), part
    free = loss_and_grads(params, jnp.zeros((4, 3), jnp.float32))[0][0]
    assert not np.isclose(free, l1, rtol=1e-4)  # the comparison can tell the paths apart


def test_context_steps_always_see_ground_truth(rng):
    model = tiny_model()
    frames, cond = clip(rng, t=6)
    ones, zeros = jnp.ones((5, 2)), jnp.zeros((5, 2))
    run = lambda teacher: svg.training_rollout(model, frames, cond, teacher, jax.random.key(2), n_past=2)  # noqa: E731
    forced, free = run(ones), run(zeros)
    np.testing.assert_array_equal(forced.preds[:2], free.preds[:2])  # t = 1, 2 see x_0, x_1
    assert not np.allclose(forced.preds[2:], free.preds[2:])          # t = 3 sees its own x_2
    assert forced.preds.shape == (5, 2, 64, 64, 3) and forced.aux.mu.shape == (5, 2, 3)


def test_condition_changes_the_prediction_causally(rng):
    cfg = tiny_cfg()
    graphdef, state = init_state(cfg, jax.random.key(0))
    params = visible(state.params)
    predict = make_predict(graphdef, cfg, z_mode="mean")
    frames, cond = clip(rng)
    base = np.asarray(predict(params, state.batch_stats, (frames, cond), jax.random.key(0)))
    changed = cond.copy()
    changed[:, 3, :4] += 2.0  # the action of frame 3 (the second predicted frame)
    moved = np.asarray(predict(params, state.batch_stats, (frames, changed), jax.random.key(0)))
    assert base.shape == (2, 3, 64, 64, 3)
    np.testing.assert_array_equal(base[:, 0], moved[:, 0])   # frame 2 cannot see frame 3's action
    assert np.abs(base[:, 1] - moved[:, 1]).max() > 1e-4     # frame 3 does


def test_learned_prior_drives_prediction_and_kl(rng):
    cfg = tiny_cfg(prior="learned")
    graphdef, state = init_state(cfg, jax.random.key(0))
    model = nnx.merge(graphdef, state.params, state.batch_stats)
    frames, cond = clip(rng)
    loss, m, _ = svg.objective(model, (frames, cond), jnp.ones((4, 2)), jax.random.key(1), 1e-4, cfg)
    np.testing.assert_allclose(loss, m["mse"] + 1e-4 * m["kl"], rtol=1e-6)
    predict = make_predict(graphdef, cfg, z_mode="mean")
    params = visible(state.params)
    a = predict(params, state.batch_stats, (frames, cond), jax.random.key(0))
    bumped = jax.tree.map(lambda x: x, params)
    bumped["prior"]["mu_net"]["bias"] = nnx.Param(bumped["prior"]["mu_net"]["bias"][...] + 1.0)
    b = predict(bumped, state.batch_stats, (frames, cond), jax.random.key(0))
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-5  # z comes from the learned prior


def ynn_convolutions(compiled_text: str) -> int:
    """Convolutions XLA CPU hands to YNNPACK: fused computations of `__ynn_fusion`s."""
    bodies = dict(re.findall(r"^%(fused_computation\S*) (.*?)^}", compiled_text, re.M | re.S))
    callers = re.findall(r'calls=%(fused_computation[^,\s]*),.*"kind":"__ynn_fusion"', compiled_text)
    return sum(" convolution(" in bodies[name] for name in callers)


def test_svg_compiles_its_convolutions_for_eigen_on_cpu(rng):
    """`kernels.XLA_CPU_OPTIONS` reach the compiler: the prediction program hands YNNPACK
    only the convolutions it fuses with a max-pool, XLA's defaults hand it every one."""
    cfg = tiny_cfg()
    graphdef, state = init_state(cfg, jax.random.key(0))
    lowered = make_predict(graphdef, cfg).lower(state.params, state.batch_stats, clip(rng), jax.random.key(0))
    xla_default = ",".join(f"LIBRARY_FUSION_TYPE_{t}" for t in ("INDIVIDUAL_DOT", "INDIVIDUAL_CONVOLUTION", "REDUCE"))
    ours = lowered.compile().as_text()
    default = lowered.compile({"xla_cpu_experimental_ynn_fusion_type": xla_default}).as_text()
    assert ynn_convolutions(ours) < ynn_convolutions(default) / 2
