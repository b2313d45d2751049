"""Lab4 building blocks and model: reference parameter counts, the CPU-friendly conv
rewrites against XLA's own convolutions, the reference's LeakyReLU quirks, the per-frame
BatchNorm, the reparameterisation and the rollout/generation shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import TINY_DIMS, random_model, random_module
from cvae_jax import layers
from cvae_jax.layers import (Conv, ConvFFN, DepthConv, DepthConvBlock, DepthwiseConv3x3,
                             FrameBatchNorm, ResidualBlock, count_params)
from cvae_jax.models import lab4
from cvae_jax.models.lab4 import Lab4CVAE, reparameterize

REF_DIMS = dict(F_dim=128, L_dim=32, N_dim=12, D_out_dim=192)


def abstract(factory):
    """Shapes only: counting parameters needs no initialiser to run."""
    return nnx.eval_shape(factory)


def n_params(factory) -> int:
    return count_params(abstract(factory))


# --------------------------------------------------------------------------- parameter counts


@pytest.fixture(scope="module")
def ref_model():
    return abstract(lambda: Lab4CVAE(**REF_DIMS, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("name,expected", [
    ("frame_encoder", 193_568), ("pose_encoder", 16_832), ("posterior", 8_289),
    ("fusion", 617_768), ("generator", 749_163)])
def test_module_param_counts_match_reference(ref_model, name, expected):
    assert count_params(getattr(ref_model, name)) == expected


def test_total_param_count_and_buffers_match_reference(ref_model):
    assert count_params(ref_model) == 1_585_620
    # BN running mean + var (PyTorch's num_batches_tracked has no counterpart here)
    buffers = jax.tree_util.tree_leaves(nnx.state(ref_model, nnx.BatchStat))
    assert sum(b.size for b in buffers) == 32


@pytest.mark.parametrize("module,expected", [
    ("frame_encoder", [2_832, 2_320, 14_432, 8_736, 57_536, 33_856, 73_856]),
    ("posterior", [4_890, 123, 522, 390, 2_052, 0, 312]),
    ("fusion", [239_596, 90_730, 54_696, 133_300, 80_822, 18_624]),
    ("generator", [298_176, 267_552, 75_360, 66_960, 19_248, 16_776, 5_016, 75]),
])
def test_per_index_counts_match_reference_table(ref_model, module, expected):
    """The Sequential index is the state_dict prefix: each index must hold the same layer."""
    assert [count_params(layer) for layer in getattr(ref_model, module).layers] == expected


def residual_formula(i, o):
    return 9 * i * o + o + 9 * o * o + o + (i * o + o if i != o else 0)


def depthconv_formula(i, o):
    return i * i + i + 10 * i + i * o + o + (i * o + o if i != o else 0)


def ffn_formula(c):
    return 6 * c * c + 5 * c


PAIRS = [(3, 16), (16, 16), (160, 3), (172, 43), (43, 86), (96, 48)]


@pytest.mark.parametrize("i,o", PAIRS)
def test_block_param_formulas(i, o):
    assert n_params(lambda: ResidualBlock(i, o, rngs=nnx.Rngs(0))) == residual_formula(i, o)
    assert n_params(lambda: DepthConv(i, o, rngs=nnx.Rngs(0))) == depthconv_formula(i, o)
    assert n_params(lambda: ConvFFN(o, rngs=nnx.Rngs(0))) == ffn_formula(o)
    assert (n_params(lambda: DepthConvBlock(i, o, rngs=nnx.Rngs(0)))
            == depthconv_formula(i, o) + ffn_formula(o))


def test_torch_default_init_bounds():
    """PyTorch's kaiming-uniform(a=sqrt(5)) is U(+-1/sqrt(fan_in)) for weight and bias."""
    conv = Conv(16, 8, 3, padding=1, rngs=nnx.Rngs(0))
    bound = 1 / np.sqrt(16 * 9)
    for p in (np.asarray(conv.kernel[...]), np.asarray(conv.bias[...])):
        assert np.abs(p).max() <= bound
    k = np.asarray(conv.kernel[...])
    assert np.abs(k).max() > 0.95 * bound and abs(k.mean()) < 0.1 * bound  # fills the range
    dw = DepthwiseConv3x3(8, rngs=nnx.Rngs(0))
    assert np.abs(np.asarray(dw.kernel[...])).max() <= 1 / 3  # fan_in of a depthwise 3x3 is 9


# --------------------------------------------------------------------------- convolutions


def lax_conv(x, kernel_hwio, padding, groups=1):
    return jax.lax.conv_general_dilated(x, kernel_hwio, (1, 1), [(padding, padding)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups)


def test_depthwise_shifted_adds_equal_grouped_conv(rng):
    c = 5
    dw = random_module(lambda: DepthwiseConv3x3(c, rngs=nnx.Rngs(0)), seed=3)
    x = jnp.asarray(rng.normal(size=(2, 3, 6, 7, c)), jnp.float32)  # (T, B, H, W, C)
    kernel = dw.kernel[...]
    want = lax_conv(x.reshape(6, 6, 7, c), kernel[:, :, None, :], 1, groups=c) + dw.bias[...]
    np.testing.assert_allclose(dw(x), want.reshape(x.shape), atol=1e-5)
    # an asymmetric kernel proves the taps are not flipped (cross-correlation, as torch)
    assert not np.allclose(kernel, kernel[::-1, ::-1])


def test_conv_1x1_matmul_equals_lax_conv(rng):
    conv = random_module(lambda: Conv(6, 4, 1, rngs=nnx.Rngs(0)), seed=4)
    x = jnp.asarray(rng.normal(size=(3, 5, 7, 6)), jnp.float32)
    want = lax_conv(x, conv.kernel[...], 0) + conv.bias[...]
    np.testing.assert_allclose(conv(x), want, atol=1e-5)


def test_conv_3x3_with_leading_time_axis_equals_per_frame(rng):
    conv = random_module(lambda: Conv(3, 4, 3, padding=1, rngs=nnx.Rngs(0)), seed=5)
    x = jnp.asarray(rng.normal(size=(2, 3, 5, 6, 3)), jnp.float32)
    got = conv(x)
    for t in range(2):
        np.testing.assert_allclose(got[t], lax_conv(x[t], conv.kernel[...], 1) + conv.bias[...],
                                   atol=1e-5)


# --------------------------------------------------------------------------- LeakyReLU quirks


def test_conv_ffn_matches_numpy_with_gate_slope_0_1(rng):
    c = 3
    ffn = random_module(lambda: ConvFFN(c, rngs=nnx.Rngs(0)), seed=6)
    x = rng.normal(size=(2, 4, 5, c)).astype(np.float32)
    w1, b1 = np.asarray(ffn.conv.kernel[...])[0, 0], np.asarray(ffn.conv.bias[...])
    w2, b2 = np.asarray(ffn.conv_out.kernel[...])[0, 0], np.asarray(ffn.conv_out.bias[...])

    def numpy_ffn(slope):
        h = x @ w1 + b1
        value, gate = h[..., :2 * c], h[..., 2 * c:]  # value = first half of the channels
        return x + (value * np.where(gate >= 0, gate, slope * gate)) @ w2 + b2

    got = np.asarray(ffn(jnp.asarray(x)))
    np.testing.assert_allclose(got, numpy_ffn(0.1), atol=1e-5)
    assert not np.allclose(got, numpy_ffn(0.01), atol=1e-4)  # the slope is observable


def numpy_batchnorm(x, scale, bias, eps=1e-5):
    """BatchNorm2d in training mode on (B, H, W, C): biased batch variance."""
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_pose_encoder_leaky_relu_true_is_identity(rng):
    """LeakyReLU(True) has slope 1.0: negative BN outputs reach the residual block unchanged."""
    model = random_model(seed=7)
    enc = model.pose_encoder
    pose = rng.uniform(size=(2, 2, 8, 16, 3)).astype(np.float32)  # (T, B, H, W, 3)
    got, _ = enc(jnp.asarray(pose), use_running_average=False)

    kernel = np.asarray(enc.conv.kernel[...])
    scale, bias = np.asarray(enc.bn.scale[...]), np.asarray(enc.bn.bias[...])
    normed = []
    for t in range(2):
        padded = np.pad(pose[t], [(0, 0), (3, 3), (3, 3), (0, 0)], mode="reflect")  # ReflectionPad2d(3)
        conv = np.asarray(lax_conv(jnp.asarray(padded), kernel, 0)) + np.asarray(enc.conv.bias[...])
        normed.append(numpy_batchnorm(conv, scale, bias))
    normed = np.stack(normed)
    assert (normed < 0).mean() > 0.2
    np.testing.assert_allclose(got, enc.res(jnp.asarray(normed)), atol=1e-4)
    assert not np.allclose(got, enc.res(layers.leaky_relu(jnp.asarray(normed))), atol=1e-3)
    # the same quirk before the posterior head
    neg = -jnp.arange(1.0, 5.0)
    np.testing.assert_array_equal(model.posterior.layers[5](neg), neg)


# --------------------------------------------------------------------------- FrameBatchNorm


@pytest.fixture
def frame_bn(rng):
    bn = random_module(lambda: FrameBatchNorm(4), seed=8)
    return bn


def test_frame_batchnorm_stats_per_time_index(frame_bn, rng):
    x = jnp.asarray(rng.normal(size=(3, 2, 5, 6, 4)) * rng.uniform(0.5, 3, size=(3, 1, 1, 1, 1)),
                    jnp.float32)
    y, (mean, var) = frame_bn(x, use_running_average=False)
    assert mean.shape == var.shape == (3, 1, 1, 1, 4)
    scale, bias = np.asarray(frame_bn.scale[...]), np.asarray(frame_bn.bias[...])
    for t in range(3):
        y_t, _ = frame_bn(x[t], use_running_average=False)  # one reference call per frame
        np.testing.assert_allclose(y[t], y_t, atol=1e-5)
        np.testing.assert_allclose(y[t], numpy_batchnorm(np.asarray(x[t]), scale, bias), atol=1e-4)
    # statistics over the whole clip at once would differ (the frames have different scales)
    whole = (x - x.mean((0, 1, 2, 3))) / jnp.sqrt(x.var((0, 1, 2, 3)) + 1e-5) * scale + bias
    assert not np.allclose(y, whole, atol=1e-2)


def test_frame_batchnorm_running_average_mode(frame_bn, rng):
    x = jnp.asarray(rng.normal(size=(2, 3, 4, 4)), jnp.float32)
    y, _ = frame_bn(x, use_running_average=True)
    want = ((np.asarray(x) - np.asarray(frame_bn.mean[...])) / np.sqrt(np.asarray(frame_bn.var[...]) + 1e-5)
            * np.asarray(frame_bn.scale[...]) + np.asarray(frame_bn.bias[...]))
    np.testing.assert_allclose(y, want, atol=1e-5)


def test_updated_running_stats_match_torch_sequential_update(frame_bn, rng):
    x = rng.normal(loc=0.5, size=(3, 2, 5, 6, 4)).astype(np.float32)
    _, moments = frame_bn(jnp.asarray(x), use_running_average=False)
    run_mean, run_var = frame_bn.updated_running_stats(*moments, count=2 * 5 * 6)
    m_ref, v_ref = np.asarray(frame_bn.mean[...]), np.asarray(frame_bn.var[...])
    for t in range(3):  # what three BatchNorm2d(momentum=0.1) forward calls in train mode do
        flat = x[t].reshape(-1, 4)
        m_ref = 0.9 * m_ref + 0.1 * flat.mean(0)
        v_ref = 0.9 * v_ref + 0.1 * flat.var(0, ddof=1)
    np.testing.assert_allclose(run_mean, m_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run_var, v_ref, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- reparameterisation


def test_reparameterize_uses_the_given_key(rng):
    mu = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    logvar = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    key = jax.random.key(5)
    eps = jax.random.normal(key, mu.shape)
    np.testing.assert_allclose(reparameterize(mu, logvar, key), mu + jnp.exp(logvar / 2) * eps, rtol=1e-6)
    assert not np.allclose(reparameterize(mu, logvar, jax.random.key(6)), reparameterize(mu, logvar, key))


def test_reparameterize_sample_moments():
    """logvar is a log-variance: std = exp(logvar / 2)."""
    n = 200_000
    z = np.asarray(reparameterize(jnp.full((n,), 1.5), jnp.full((n,), np.log(0.25)), jax.random.key(0)))
    assert abs(z.mean() - 1.5) < 0.01
    assert abs(z.std() - 0.5) < 0.01


# --------------------------------------------------------------------------- rollout shapes

B, T, H, W = 2, 5, 8, 16


@pytest.fixture(scope="module")
def clip():
    r = np.random.default_rng(11)
    return (jnp.asarray(r.uniform(size=(B, T, H, W, 3)), jnp.float32),
            jnp.asarray(r.uniform(size=(B, T, H, W, 3)), jnp.float32))


def test_training_rollout_shapes(clip):
    model = random_model(seed=1)
    frames, poses = clip
    teacher = jnp.ones((T - 1, B))
    terms = jax.jit(lambda f, p, t, k: lab4.training_rollout(model, f, p, t, k))(
        frames, poses, teacher, jax.random.key(0))
    n = TINY_DIMS["N_dim"]
    assert terms.preds.shape == terms.targets.shape == (T - 1, B, H, W, 3)
    assert terms.mu.shape == terms.logvar.shape == (T - 1, B, H, W, n)
    np.testing.assert_array_equal(terms.targets, jnp.swapaxes(frames, 0, 1)[1:])
    mean, var = terms.pose_moments
    assert mean.shape == var.shape == (T - 1, 1, 1, 1, 16)
    assert np.isfinite(terms.preds).all()


@pytest.fixture(scope="module")
def generated(clip):
    """(raw, sigmoid) generations of the same weights from the same key."""
    frames, poses = clip
    out = []
    for sig in (False, True):
        model = random_model(seed=2, output_sigmoid=sig)
        gen = jax.jit(lambda f, p, k, model=model: lab4.generate(model, f, p, k))
        out.append(np.asarray(gen(frames[:, 0], poses, jax.random.key(3))))
    return out


def test_generate_shape_and_first_frame(clip, generated):
    frames, _ = clip
    for out in generated:
        assert out.shape == (B, T, H, W, 3)
        np.testing.assert_array_equal(out[:, 0], frames[:, 0])
        assert np.isfinite(out).all()


def test_output_sigmoid_bounds_generation(generated):
    raw, squashed = generated
    assert (raw[:, 1:] < 0).any() or (raw[:, 1:] > 1).any()  # the reference output is unbounded
    assert ((squashed[:, 1:] > 0) & (squashed[:, 1:] < 1)).all()


def test_output_sigmoid_is_applied_to_the_generator_output(rng):
    raw, squashed = random_model(seed=4), random_model(seed=4, output_sigmoid=True)
    c = TINY_DIMS
    prev = jnp.asarray(rng.normal(size=(1, 4, 4, c["F_dim"])), jnp.float32)
    pose = jnp.asarray(rng.normal(size=(1, 4, 4, c["L_dim"])), jnp.float32)
    z = jnp.asarray(rng.normal(size=(1, 4, 4, c["N_dim"])), jnp.float32)
    got = jax.jit(squashed.decode)(prev, pose, z)
    np.testing.assert_allclose(got, jax.nn.sigmoid(jax.jit(raw.decode)(prev, pose, z)), atol=1e-6)
