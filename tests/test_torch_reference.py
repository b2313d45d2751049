"""The PyTorch baselines of the benchmarks (benchmarks/torch_ref): reference parameter
counts, and, with a cvae-jax model's weights copied in, the same module outputs, clip
loss, gradients, BatchNorm running statistics and generated frames as cvae-jax under the
same noise. That is what makes a JAX-vs-PyTorch timing a comparison of one model.

PyTorch runs on one thread here: with the default two OpenMP threads on a busy 2-core
machine every op waits for a descheduled thread (~25 ms per convolution measured)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")  # the torch extra; `-m "not torch"` runs without it

from benchmarks.torch_ref import lab4 as tlab4  # noqa: E402
from benchmarks.torch_ref import svg as tsvg  # noqa: E402
from conftest import random_model  # noqa: E402
from cvae_jax.config import preset  # noqa: E402
from cvae_jax.layers import count_params  # noqa: E402
from cvae_jax.models import lab4, svg  # noqa: E402
from cvae_jax.models.lab4 import Lab4CVAE  # noqa: E402

# F, L at the reference values: the template derives the encoder widths from them
# (F/8, F/4, F/2 and L/2), which cvae-jax fixes at 16/32/64 and 16. No output sigmoid
# (the reference has none): it would squash the differences the comparison must see.
PARITY_DIMS = dict(F_dim=128, L_dim=32, N_dim=8, D_out_dim=64)
B, T, H, W = 2, 4, 8, 16
BETA = 0.5


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def nchw(a) -> torch.Tensor:
    """(..., H, W, C) JAX/NumPy array -> (..., C, H, W) torch tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(a, np.float32), -1, -3)))


def nhwc(t: torch.Tensor) -> np.ndarray:
    return np.moveaxis(t.detach().numpy(), -3, -1)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def assert_close(got, want, rtol=1e-5, floor=1e-12):
    """Agreement relative to the tensor's scale (elementwise rtol fails near zero); `floor`
    bounds the scale below for tensors that are zero up to rounding."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    scale = max(float(np.abs(want).max()), floor)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


# --------------------------------------------------------------------------- Lab4: counts


def test_lab4_reference_param_counts_and_state_dict():
    model = tlab4.build()
    assert n_params(model) == 1_585_620
    counts = {"frame_transformation": [2_832, 2_320, 14_432, 8_736, 57_536, 33_856, 73_856],
              "label_transformation": [0, 2_368, 32, 0, 14_432],
              "Gaussian_Predictor": [4_890, 123, 522, 390, 2_052, 0, 312],
              "Decoder_Fusion": [239_596, 90_730, 54_696, 133_300, 80_822, 18_624],
              "Generator": [298_176, 267_552, 75_360, 66_960, 19_248, 16_776, 5_016, 75]}
    for name, per_index in counts.items():
        assert [n_params(m) for m in getattr(model, name)] == per_index, name
    state = model.state_dict()
    assert len(state) == 209
    assert sum(b.numel() for b in model.buffers()) == 33
    assert state["frame_transformation.1.block.0.depth_conv.weight"].shape == (16, 1, 3, 3)
    assert model.frame_transformation[1].block[0].depth_conv.groups == 16
    assert state["Decoder_Fusion.0.block.1.conv.weight"].shape == (688, 172, 1, 1)
    assert state["Decoder_Fusion.0.block.1.conv_out.weight"].shape == (172, 344, 1, 1)


def test_lab4_width_overrides_build_the_cvae_jax_network_at_cpu_dims():
    cfg = preset("cpu")
    dims = dict(F_dim=cfg.F_dim, L_dim=cfg.L_dim, N_dim=cfg.N_dim, D_out_dim=cfg.D_out_dim)
    jax_model = nnx.eval_shape(lambda: Lab4CVAE(**dims, output_sigmoid=True, rngs=nnx.Rngs(0)))
    torch_model = tlab4.build(**dims, output_sigmoid=True, frame_widths=(16, 32, 64), pose_hidden=16)
    assert n_params(torch_model) == count_params(jax_model)


# --------------------------------------------------------------------------- Lab4: parity


@pytest.fixture(scope="module")
def lab4_pair():
    jax_model = random_model(seed=3, **PARITY_DIMS)
    torch_model = tlab4.load_jax_params(tlab4.build(**PARITY_DIMS), jax_model)
    return jax_model, torch_model


@pytest.fixture(scope="module")
def lab4_clip():
    rng = np.random.default_rng(0)
    return (rng.random((B, T, H, W, 3), dtype=np.float32), rng.random((B, T, H, W, 3), dtype=np.float32))


def test_lab4_load_from_a_params_state_and_shape_check(lab4_pair):
    jm, tm = lab4_pair
    from_state = tlab4.load_jax_params(tlab4.build(**PARITY_DIMS), nnx.split(jm, nnx.Param, nnx.BatchStat)[1])
    for name, value in from_state.state_dict().items():
        if "running" in name:  # a params state carries no running stats: left at init
            assert not torch.equal(value, tm.state_dict()[name])
        elif "num_batches" not in name:
            assert torch.equal(value, tm.state_dict()[name]), name
    with pytest.raises(ValueError, match="shape"):
        tlab4.load_jax_params(tlab4.build(**{**PARITY_DIMS, "D_out_dim": 32}), jm)


def test_lab4_modules_match(lab4_pair, lab4_clip):
    jm, tm = lab4_pair
    frames, poses = lab4_clip
    x, p = frames[:, 0], poses[:, 1]
    with torch.no_grad():
        f_t, p_t = tm.frame_transformation(nchw(x)), tm.label_transformation(nchw(p))
        z_t = torch.randn(B, PARITY_DIMS["N_dim"], H, W)
        _, mu_t, logvar_t = tm.Gaussian_Predictor(f_t, p_t, z_t)
        out_t = tm.decode(f_t, p_t, z_t)
    f_j = jm.encode_frame(jnp.asarray(x))
    p_j, _ = jm.encode_pose(jnp.asarray(p), use_running_average=False)
    mu_j, logvar_j = jm.posterior_moments(f_j, p_j)
    assert_close(nhwc(f_t), f_j)
    assert_close(nhwc(p_t), p_j)
    assert_close(nhwc(mu_t), mu_j)
    assert_close(nhwc(logvar_t), logvar_j)
    assert_close(nhwc(out_t), jm.decode(f_j, p_j, jnp.asarray(nhwc(z_t))))


def lab4_eps(key, n_steps: int) -> list[torch.Tensor]:
    """The noise cvae-jax's rollout draws at each step from `key`, as torch tensors."""
    shape = (B, H, W, PARITY_DIMS["N_dim"])
    return [nchw(jax.random.normal(k, shape)) for k in jax.random.split(key, n_steps)]


def test_lab4_clip_loss_gradients_and_running_stats_match(lab4_pair, lab4_clip):
    """Teacher-forced and free-running clips: the template's per-frame loop and cvae-jax's
    scanned objective give the same loss and gradients for the same noise."""
    jm, _ = lab4_pair
    frames, poses = lab4_clip
    cfg = preset("cpu").replace(**PARITY_DIMS, scan_unroll=1)
    key = jax.random.key(7)
    graphdef, params, stats = nnx.split(jm, nnx.Param, nnx.BatchStat)
    batch = (jnp.asarray(frames), jnp.asarray(poses))

    @jax.jit
    def loss_grads(params, teacher):
        def f(params):
            model = nnx.merge(graphdef, params, stats)
            loss, _, moments = lab4.objective(model, batch, teacher, key, BETA, cfg)
            return loss, moments
        return jax.value_and_grad(f, has_aux=True)(params)

    eps = lab4_eps(key, T - 1)
    for teacher in (True, False):
        (loss_j, moments), grads_j = loss_grads(params, jnp.full((T - 1, B), float(teacher)))
        tm = tlab4.load_jax_params(tlab4.build(**PARITY_DIMS), jm)
        loss_t = tlab4.clip_loss(tm, nchw(frames), nchw(poses), teacher, BETA, eps)
        loss_t.backward()
        assert_close(loss_t.item(), float(loss_j))
        grads_j = tlab4.jax_to_torch_arrays(grads_j)
        # the conv bias before the pose BatchNorm has gradient 0 up to rounding: a floor
        floor = 1e-3 * max(float(np.abs(g).max()) for g in grads_j.values())
        for name, p in tm.named_parameters():
            assert_close(p.grad.numpy(), grads_j[name], rtol=2e-4, floor=floor)
        if teacher:  # T-1 pose-encoder BatchNorm updates, as torch makes them
            folded = nnx.merge(graphdef, params, stats)
            lab4.fold_batch_stats(folded, moments, batch)
            bn = tm.label_transformation[2]
            assert_close(bn.running_mean.numpy(), folded.pose_encoder.bn.mean[...])
            assert_close(bn.running_var.numpy(), folded.pose_encoder.bn.var[...])


def test_lab4_generate_matches_cvae_jax_batch_statistics_mode(lab4_pair, lab4_clip):
    jm, tm = lab4_pair
    frames, poses = lab4_clip
    key = jax.random.key(11)
    want = lab4.generate(jm, jnp.asarray(frames[:, 0]), jnp.asarray(poses), key, bn_mode="batch")
    got = tlab4.generate(tm, nchw(frames[:, 0]), nchw(poses), z=lab4_eps(key, T - 1))
    assert got.shape == (B, T, 3, H, W)
    assert torch.equal(got[:, 0], nchw(frames[:, 0]))
    assert_close(nhwc(got), want)


def test_lab4_train_step_lowers_the_loss():
    torch.manual_seed(0)
    model = tlab4.build(F_dim=32, L_dim=16, N_dim=8, D_out_dim=64, output_sigmoid=True)
    optimizer = tlab4.make_optimizer(model, lr=2e-3)
    frames, poses = torch.rand(2, 3, 3, 8, 16), torch.rand(2, 3, 3, 8, 16)
    eps = torch.randn(2, 2, 8, 8, 16)
    losses = [tlab4.train_step(model, optimizer, frames, poses, True, 0.01, eps) for _ in range(8)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0]
    video = tlab4.generate(model, frames[:, 0], poses)
    assert video.shape == (2, 3, 3, 8, 16)
    assert torch.equal(video[:, 0], frames[:, 0])
    assert not video.requires_grad


# --------------------------------------------------------------------------- SVG


def test_svg_reference_param_counts():
    model = tsvg.build()
    assert n_params(model.encoder) == 8_689_600
    assert n_params(model.decoder) == 11_822_659
    assert n_params(model.frame_predictor) == 1_137_024  # input g + z + 7 = 199
    assert n_params(model.posterior) == 592_256
    assert n_params(model) == 22_241_539


SVG_TINY = dict(vgg_width=4, g_dim=8, z_dim=3, rnn_size=8, n_past=2, n_future=2)
SVG_B = 3


@pytest.fixture(scope="module")
def svg_jax():
    """A cvae-jax SVG-FP with weights 3x SVG's init (visible input effects) and random
    BatchNorm running stats."""
    cfg = preset("cpu", "svg").replace(**SVG_TINY, scan_unroll=1).validated()
    graphdef, params, stats = nnx.split(svg.build(cfg, jax.random.key(0)), nnx.Param, nnx.BatchStat)
    rng = np.random.default_rng(5)
    stats = jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape) if "var" in jax.tree_util.keystr(path)
                                    else rng.uniform(-0.1, 0.1, s.shape), jnp.float32), stats)
    return cfg, nnx.merge(graphdef, jax.tree.map(lambda p: 3 * p, params), stats)


def svg_torch_copy(cfg, jax_model) -> tsvg.SVG:
    """A fresh copy per test: training-mode calls move torch's running stats."""
    return tsvg.load_jax_params(tsvg.build(cfg.g_dim, cfg.z_dim, cfg.rnn_size, cfg.vgg_width), jax_model)


def jax_noise(key, shape) -> torch.Tensor:
    return torch.from_numpy(np.array(jax.random.normal(key, shape)))


@pytest.fixture(scope="module")
def svg_clip():
    rng = np.random.default_rng(1)
    t = SVG_TINY["n_past"] + SVG_TINY["n_future"]
    return (rng.random((SVG_B, t, 64, 64, 3), dtype=np.float32),
            rng.standard_normal((SVG_B, t, 7)).astype(np.float32))


def test_svg_clip_loss_matches_cvae_jax(svg_jax, svg_clip):
    cfg, jm = svg_jax
    tm = svg_torch_copy(cfg, jm)
    frames, cond = svg_clip
    key = jax.random.key(3)
    n_steps = frames.shape[1] - 1
    teacher = jnp.ones((n_steps, SVG_B))
    want, _, _ = jax.jit(lambda: svg.objective(jm, (jnp.asarray(frames), jnp.asarray(cond)), teacher,
                                               key, BETA, cfg))()
    eps = [jax_noise(jax.random.split(k)[0], (SVG_B, cfg.z_dim)) for k in jax.random.split(key, n_steps)]
    got = tsvg.clip_loss(tm, nchw(frames), torch.from_numpy(cond), cfg.n_past, BETA, eps)
    assert_close(got.item(), float(want))


def test_svg_predict_matches_cvae_jax(svg_jax, svg_clip):
    cfg, jm = svg_jax
    tm = svg_torch_copy(cfg, jm)
    frames, cond = svg_clip
    key = jax.random.key(4)
    n_past, n_future = cfg.n_past, cfg.n_future
    want = svg.predict(jm, jnp.asarray(frames[:, :n_past]), jnp.asarray(cond), key, n_future=n_future)
    noise = []
    for t, k in enumerate(jax.random.split(key, n_past + n_future - 1), start=1):
        k_post, k_prior = jax.random.split(k)
        noise.append(jax_noise(k_post if t < n_past else k_prior, (SVG_B, cfg.z_dim)))
    got = tsvg.predict(tm, nchw(frames[:, :n_past]), torch.from_numpy(cond), n_future, noise)
    assert got.shape == (SVG_B, n_future, 3, 64, 64)
    assert tm.training
    assert_close(nhwc(got), want, rtol=5e-4)  # 3x weights amplify rounding over the steps


def test_svg_train_step_lowers_the_loss():
    torch.manual_seed(0)
    model = tsvg.build(g_dim=8, z_dim=3, rnn_size=8, width=4)
    optimizer = tsvg.make_optimizer(model, lr=0.01)
    # flat colours away from the fresh decoder's 0.5 (uniform noise would already sit at its
    # MSE floor of 1/12)
    frames = (0.1 + 0.8 * torch.rand(4, 1, 3, 1, 1)).expand(4, 4, 3, 64, 64).contiguous()
    cond, eps = torch.randn(4, 4, 7), torch.randn(3, 4, 3)
    losses = [tsvg.train_step(model, optimizer, frames, cond, 2, 1e-4, eps) for _ in range(6)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0]
    pred = tsvg.predict(model, frames[:, :2], cond, 2)
    assert pred.shape == (4, 2, 3, 64, 64)
    assert float(pred.min()) >= 0 and float(pred.max()) <= 1
