"""The Lab4 pose-conditioned CVAE in eager PyTorch, as the course template builds it.

Why: benchmarks compare cvae-jax against what a course user runs, i.e. the template's
modules (NCHW, real grouped depthwise convolutions) driven by the template trainer's
per-frame Python loop with one backward per clip. Module and attribute names follow the
template, so `state_dict()` keys are the reference checkpoint keys
(`frame_transformation.0.conv1.weight`, ...), and `load_jax_params` copies a cvae-jax
model in with the mapping `cvae-jax-convert` writes checkpoints with (cvae_jax/torch_layout.py),
which makes the baseline provably the same network.

Widths follow the template's formulas (frame encoder F/8, F/4, F/2; pose encoder L/2),
which equal cvae-jax's fixed 16/32/64 and 16 only at the reference dims F=128, L=32:
pass `frame_widths`/`pose_hidden` to build cvae-jax's network at other dims.

Timing note: PyTorch's OpenMP threads busy-wait at every op; on a machine whose cores are
shared with other jobs, give it fewer threads than cores (`torch.set_num_threads`), or
one small convolution can take ~25 ms instead of ~0.1 ms (measured on 2 busy cores).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from cvae_jax.torch_layout import flat, to_torch_layout, torch_name

REFERENCE_DIMS = dict(F_dim=128, L_dim=32, N_dim=12, D_out_dim=192)


# --------------------------------------------------------------------------- blocks (layers.py)


class ResidualBlock(nn.Module):
    """act(conv2(act(conv1 x))) + skip(x), LeakyReLU slope 0.01, no activation after the add."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)
        self.leaky_relu = nn.LeakyReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=stride, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, stride=stride) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.leaky_relu(self.conv2(self.leaky_relu(self.conv1(x))))
        return out + (self.skip(x) if self.skip is not None else x)


class DepthConv(nn.Module):
    """conv2(depthwise(lrelu(conv1 x))) + adaptor(x); depthwise = Conv2d(groups=in_ch)."""

    def __init__(self, in_ch: int, out_ch: int, depth_kernel: int = 3, stride: int = 1,
                 slope: float = 0.01):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_ch, in_ch, 1, stride=stride), nn.LeakyReLU(slope))
        self.depth_conv = nn.Conv2d(in_ch, in_ch, depth_kernel, padding=depth_kernel // 2, groups=in_ch)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 1)
        if stride != 1:
            self.adaptor = nn.Conv2d(in_ch, out_ch, 2, stride=2)
        elif in_ch != out_ch:
            self.adaptor = nn.Conv2d(in_ch, out_ch, 1)
        else:
            self.adaptor = None

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.depth_conv(self.conv1(x)))
        return out + (self.adaptor(x) if self.adaptor is not None else x)


class ConvFFN(nn.Module):
    """x + conv_out(value * lrelu_0.1(gate)); value/gate = first/second half of conv(x)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, 4 * ch, 1)
        self.conv_out = nn.Conv2d(2 * ch, ch, 1)
        self.relu = nn.LeakyReLU(0.1)  # hard-coded in the template

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.conv(x).chunk(2, dim=1)
        return x + self.conv_out(value * self.relu(gate))


class DepthConvBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.block = nn.Sequential(DepthConv(in_ch, out_ch), ConvFFN(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


# --------------------------------------------------------------------------- modules (modules.py)


class RGB_Encoder(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, widths: Sequence[int] | None = None):
        w1, w2, w3 = widths or (out_ch // 8, out_ch // 4, out_ch // 2)
        super().__init__(
            ResidualBlock(in_ch, w1), DepthConvBlock(w1, w1), ResidualBlock(w1, w2),
            DepthConvBlock(w2, w2), ResidualBlock(w2, w3), DepthConvBlock(w3, w3),
            nn.Conv2d(w3, out_ch, 3, padding=1))


class Label_Encoder(nn.Sequential):
    """ReflectionPad(3) -> 7x7 conv -> BatchNorm -> LeakyReLU(True) (slope 1.0) -> ResidualBlock."""

    def __init__(self, in_ch: int, out_ch: int, hidden: int | None = None):
        hidden = hidden or out_ch // 2
        super().__init__(
            nn.ReflectionPad2d(3), nn.Conv2d(in_ch, hidden, 7), nn.BatchNorm2d(hidden),
            nn.LeakyReLU(True), ResidualBlock(hidden, out_ch))


class Gaussian_Predictor(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            ResidualBlock(in_ch, out_ch // 4), DepthConvBlock(out_ch // 4, out_ch // 4),
            ResidualBlock(out_ch // 4, out_ch // 2), DepthConvBlock(out_ch // 2, out_ch // 2),
            ResidualBlock(out_ch // 2, out_ch), nn.LeakyReLU(True), nn.Conv2d(out_ch, 2 * out_ch, 1))

    def forward(self, img: Tensor, label: Tensor, eps: Tensor | None = None):
        """(z, mu, logvar); eps (same shape as mu) fixes the noise for parity tests."""
        mu, logvar = super().forward(torch.cat([img, label], dim=1)).chunk(2, dim=1)
        eps = torch.randn_like(mu) if eps is None else eps
        return mu + torch.exp(0.5 * logvar) * eps, mu, logvar


class Decoder_Fusion(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            DepthConvBlock(in_ch, in_ch), ResidualBlock(in_ch, in_ch // 4),
            DepthConvBlock(in_ch // 4, in_ch // 2), ResidualBlock(in_ch // 2, in_ch // 2),
            DepthConvBlock(in_ch // 2, out_ch // 2), nn.Conv2d(out_ch // 2, out_ch, 1))

    def forward(self, img: Tensor, label: Tensor, z: Tensor) -> Tensor:
        return super().forward(torch.cat([img, label, z], dim=1))


class Generator(nn.Sequential):
    def __init__(self, in_ch: int):
        super().__init__(
            DepthConvBlock(in_ch, in_ch), ResidualBlock(in_ch, in_ch // 2),
            DepthConvBlock(in_ch // 2, in_ch // 2), ResidualBlock(in_ch // 2, in_ch // 4),
            DepthConvBlock(in_ch // 4, in_ch // 4), ResidualBlock(in_ch // 4, in_ch // 8),
            DepthConvBlock(in_ch // 8, in_ch // 8), nn.Conv2d(in_ch // 8, 3, 1))


class VAE_Model(nn.Module):
    """The five template modules; `decode` adds the optional sigmoid of our CPU preset."""

    def __init__(self, F_dim: int = 128, L_dim: int = 32, N_dim: int = 12, D_out_dim: int = 192,
                 output_sigmoid: bool = False, *, frame_widths: Sequence[int] | None = None,
                 pose_hidden: int | None = None):
        super().__init__()
        self.N_dim, self.output_sigmoid = N_dim, output_sigmoid
        self.frame_transformation = RGB_Encoder(3, F_dim, frame_widths)
        self.label_transformation = Label_Encoder(3, L_dim, pose_hidden)
        self.Gaussian_Predictor = Gaussian_Predictor(F_dim + L_dim, N_dim)
        self.Decoder_Fusion = Decoder_Fusion(F_dim + L_dim + N_dim, D_out_dim)
        self.Generator = Generator(D_out_dim)

    def decode(self, prev_feat: Tensor, pose_feat: Tensor, z: Tensor) -> Tensor:
        out = self.Generator(self.Decoder_Fusion(prev_feat, pose_feat, z))
        return torch.sigmoid(out) if self.output_sigmoid else out


def build(F_dim: int = 128, L_dim: int = 32, N_dim: int = 12, D_out_dim: int = 192,
          output_sigmoid: bool = False, *, frame_widths: Sequence[int] | None = None,
          pose_hidden: int | None = None) -> VAE_Model:
    """The template model in training mode (it never leaves it). `frame_widths=(16, 32, 64),
    pose_hidden=16` give cvae-jax's widths at non-reference dims."""
    return VAE_Model(F_dim, L_dim, N_dim, D_out_dim, output_sigmoid,
                     frame_widths=frame_widths, pose_hidden=pose_hidden).train()


def make_optimizer(model: nn.Module, lr: float = 1e-3) -> torch.optim.Adam:
    """The template's optimizer: Adam(lr), default betas and eps, no weight decay."""
    return torch.optim.Adam(model.parameters(), lr=lr)


# --------------------------------------------------------------------------- trainer / tester


def kl_criterion(mu: Tensor, logvar: Tensor, batch_size: int) -> Tensor:
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / batch_size


def clip_loss(model: VAE_Model, frames: Tensor, poses: Tensor, teacher: bool, beta: float,
              eps: Sequence[Tensor] | Tensor | None = None) -> Tensor:
    """Sum over frames 1..T-1 of MSE + beta * KL for frames/poses (B, T, 3, H, W).

    The previous frame is the ground truth under teacher forcing, else the previous
    prediction (not detached, so gradients flow through the chain as in the template).
    """
    batch, length = frames.shape[:2]
    mse = nn.MSELoss()
    loss = frames.new_zeros(())
    pred = frames[:, 0]
    for t in range(1, length):
        prev = frames[:, t - 1] if teacher else pred
        prev_feat = model.frame_transformation(prev)
        cur_feat = model.frame_transformation(frames[:, t])
        pose_feat = model.label_transformation(poses[:, t])
        z, mu, logvar = model.Gaussian_Predictor(cur_feat, pose_feat, None if eps is None else eps[t - 1])
        pred = model.decode(prev_feat, pose_feat, z)
        loss = loss + mse(pred, frames[:, t]) + beta * kl_criterion(mu, logvar, batch)
    return loss


def train_step(model: VAE_Model, optimizer: torch.optim.Optimizer, frames: Tensor, poses: Tensor,
               teacher: bool, beta: float, eps: Sequence[Tensor] | Tensor | None = None,
               max_norm: float = 1.0) -> float:
    """One template training step: zero grads, clip loss, one backward, clip_grad_norm_, Adam."""
    optimizer.zero_grad()
    loss = clip_loss(model, frames, poses, teacher, beta, eps)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.item()


@torch.no_grad()
def generate(model: VAE_Model, first_frame: Tensor, poses: Tensor,
             z: Sequence[Tensor] | Tensor | None = None) -> Tensor:
    """The Tester's rollout: first_frame (B, 3, H, W), poses (B, T, 3, H, W) -> (B, T, 3, H, W).

    z ~ N(0, I) per step (or z[t-1]); the model stays in training mode as in the template,
    so the pose BatchNorm uses each step's batch statistics.
    """
    batch, length, _, h, w = poses.shape
    frames = [first_frame]
    for t in range(1, length):
        z_t = torch.randn(batch, model.N_dim, h, w, device=first_frame.device) if z is None else z[t - 1]
        prev_feat = model.frame_transformation(frames[-1])
        pose_feat = model.label_transformation(poses[:, t])
        frames.append(model.decode(prev_feat, pose_feat, z_t))
    return torch.stack(frames, dim=1)


# --------------------------------------------------------------------------- cvae-jax weights


def flatten_jax(tree: Any) -> dict[tuple[str, ...], np.ndarray]:
    """Path (str parts) -> float32 copy for an nnx Module (params and BatchNorm stats), an
    `nnx.State` (e.g. `TrainState.params`) or a nested dict of arrays."""
    from flax import nnx  # only this function needs flax

    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, nnx.Any(nnx.Param, nnx.BatchStat))
    return {tuple(map(str, p)): np.array(a, np.float32) for p, a in flat(tree).items()}


def assign(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy arrays into the model's state_dict entries of the same name, checking shapes and
    that every trainable parameter got a value (running stats are optional)."""
    state = model.state_dict()
    unknown = sorted(set(arrays) - set(state))
    if unknown:
        raise KeyError(f"no torch entries for {unknown[:5]} ({len(unknown)} in all)")
    missing = sorted(n for n, _ in model.named_parameters() if n not in arrays)
    if missing:
        raise KeyError(f"no values for torch parameters {missing[:5]} ({len(missing)} in all)")
    with torch.no_grad():
        for name, value in arrays.items():
            if tuple(state[name].shape) != value.shape:
                raise ValueError(f"{name}: torch shape {tuple(state[name].shape)}, JAX gives {value.shape}")
            state[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))


def jax_to_torch_arrays(tree: Any) -> dict[str, np.ndarray]:
    """cvae-jax Lab4 parameters (or gradients, same tree) as reference-named OIHW arrays."""
    return {torch_name(p): to_torch_layout(a) for p, a in flatten_jax(tree).items()}


def load_jax_params(model: VAE_Model, params: Any) -> VAE_Model:
    """Copy a cvae-jax Lab4CVAE into `model`.

    params: the `Lab4CVAE` module itself (copies BatchNorm running stats too) or its
    `nnx.State` of parameters (`init_state(cfg, key)[1].params`, running stats untouched).
    """
    assign(model, jax_to_torch_arrays(params))
    return model
