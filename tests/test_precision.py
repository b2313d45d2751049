"""--precision bf16: bfloat16 compute with float32 parameters, optimizer state and loss
tracks the float32 run (checked on CPU; the option is meant for GPUs and TPUs)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvae_jax.config import preset
from cvae_jax.train_step import Schedule, init_state, make_predict, make_train_step


def _setup(model: str):
    r = np.random.default_rng(0)
    # one program; XLA's own convolutions, as on the GPUs and TPUs the option is for
    cfg = preset("cpu", model=model).replace(tf_mode="batch", tf_fast_path=False, conv_impl="xla",
                                               scan_unroll=1)
    if model == "lab4":
        cfg = cfg.replace(batch_size=2, train_vi_len=4, frame_H=8, frame_W=16, F_dim=8, L_dim=8,
                          N_dim=4, D_out_dim=16, kl_anneal_type="None")
        poses = np.ones((2, 4, 8, 16, 3), np.float32)  # white canvases with a moving stroke
        for t in range(4):
            poses[:, t, 2:6, 3 + 2 * t:5 + 2 * t] = r.uniform(0, 0.5, 3)
        batch = (jnp.asarray(r.uniform(size=(2, 4, 8, 16, 3)), jnp.float32), jnp.asarray(poses))
    else:
        cfg = cfg.replace(batch_size=4, n_past=2, n_future=2, vgg_width=4, g_dim=16, z_dim=4,
                          rnn_size=16)
        batch = (jnp.asarray(r.uniform(size=(4, 4, 64, 64, 3)), jnp.float32),
                 jnp.asarray(r.normal(size=(4, 4, 7)), jnp.float32))
    return cfg, batch


def _train(cfg, batch, tfr: float, steps: int = 8):
    graphdef, state = init_state(cfg, jax.random.key(0))
    step = make_train_step(graphdef, cfg, donate=False)
    mse = []
    for i in range(steps):
        sched = Schedule(*(jnp.float32(v) for v in (2e-3, 1e-3, tfr)))
        state, m = step(state, batch, sched, jax.random.key(1), jax.random.key(i))
        mse.append(float(m["mse"]))
    return graphdef, state, np.array(mse)


@pytest.mark.parametrize("model,tfr", [("lab4", 1.0), ("svg", 0.0)])
def test_bf16_training_tracks_fp32(model, tfr):
    cfg, batch = _setup(model)
    _, _, ref = _train(cfg, batch, tfr)
    graphdef, state, low = _train(cfg.replace(precision="bf16"), batch, tfr)
    assert not np.array_equal(low, ref)  # the option changes the arithmetic
    np.testing.assert_allclose(low, ref, rtol=2e-2)
    assert ref[-1] < ref[0] and low[-1] < low[0]
    kinds = {x.dtype for x in jax.tree_util.tree_leaves((state.params, state.batch_stats, state.opt_state))
             if jnp.issubdtype(x.dtype, jnp.floating)}
    assert kinds == {jnp.dtype(jnp.float32)}  # parameters, statistics and Adam moments stay fp32
    predict = make_predict(graphdef, cfg.replace(precision="bf16"))
    inputs = batch if model == "svg" else (batch[0][:, 0], batch[1])
    out = predict(state.params, state.batch_stats, inputs, jax.random.key(0))
    assert out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="--precision"):
        preset("cpu").replace(precision="fp16").validated()
