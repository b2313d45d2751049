"""SVG-FP (edenton/svg, as the 2022 course template uses it) in eager PyTorch, conditioned
on BAIR actions and positions the way cvae-jax is.

Why: the benchmark baseline for `--model svg` is what the course's PyTorch trainer runs:
vgg_64 encoder/decoder with skips, an `lstm` frame predictor and a `gaussian_lstm`
posterior whose hidden states live in the modules, a per-step Python loop with one
backward and one Adam step per batch. Names follow edenton/svg (`encoder.c1.0.main.0`,
`frame_predictor.lstm.0.weight_ih`, ...); `load_jax_params` copies a cvae-jax SVG in.

Conditioning as in cvae_jax/models/svg.py: the predictor input is [h_{t-1}, z_t, c_t]
with c_t = [action_t (4), position_t (3)]; skips come from the last context frame
(`skip_compat=True`: from frame n_past - 2 as SVG's `i < n_past` does).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.torch_ref.lab4 import assign, flatten_jax, kl_criterion

COND_DIM = 7  # action (4) + end-effector position (3)


class vgg_layer(nn.Module):
    def __init__(self, nin: int, nout: int):
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(nin, nout, 3, 1, 1), nn.BatchNorm2d(nout), nn.LeakyReLU(0.2))

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


class encoder(nn.Module):
    """(B, 3, 64, 64) -> (h (B, dim), skips [h1, h2, h3, h4])."""

    def __init__(self, dim: int, width: int = 64, nc: int = 3):
        super().__init__()
        w1, w2, w3, w4 = width, 2 * width, 4 * width, 8 * width
        self.dim = dim
        self.c1 = nn.Sequential(vgg_layer(nc, w1), vgg_layer(w1, w1))
        self.c2 = nn.Sequential(vgg_layer(w1, w2), vgg_layer(w2, w2))
        self.c3 = nn.Sequential(vgg_layer(w2, w3), vgg_layer(w3, w3), vgg_layer(w3, w3))
        self.c4 = nn.Sequential(vgg_layer(w3, w4), vgg_layer(w4, w4), vgg_layer(w4, w4))
        self.c5 = nn.Sequential(nn.Conv2d(w4, dim, 4, 1, 0), nn.BatchNorm2d(dim), nn.Tanh())
        self.mp = nn.MaxPool2d(2, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        h1 = self.c1(x)
        h2 = self.c2(self.mp(h1))
        h3 = self.c3(self.mp(h2))
        h4 = self.c4(self.mp(h3))
        return self.c5(self.mp(h4)).view(-1, self.dim), [h1, h2, h3, h4]


class decoder(nn.Module):
    """(h (B, dim), skips) -> frames (B, 3, 64, 64) in [0, 1]; concat order [up, skip]."""

    def __init__(self, dim: int, width: int = 64, nc: int = 3):
        super().__init__()
        w1, w2, w3, w4 = width, 2 * width, 4 * width, 8 * width
        self.dim = dim
        self.upc1 = nn.Sequential(nn.ConvTranspose2d(dim, w4, 4, 1, 0), nn.BatchNorm2d(w4), nn.LeakyReLU(0.2))
        self.upc2 = nn.Sequential(vgg_layer(2 * w4, w4), vgg_layer(w4, w4), vgg_layer(w4, w3))
        self.upc3 = nn.Sequential(vgg_layer(2 * w3, w3), vgg_layer(w3, w3), vgg_layer(w3, w2))
        self.upc4 = nn.Sequential(vgg_layer(2 * w2, w2), vgg_layer(w2, w1))
        self.upc5 = nn.Sequential(vgg_layer(2 * w1, w1), nn.ConvTranspose2d(w1, nc, 3, 1, 1), nn.Sigmoid())
        self.up = nn.UpsamplingNearest2d(scale_factor=2)

    def forward(self, vec: Tensor, skip: Sequence[Tensor]) -> Tensor:
        d1 = self.upc1(vec.view(-1, self.dim, 1, 1))
        d2 = self.upc2(torch.cat([self.up(d1), skip[3]], 1))
        d3 = self.upc3(torch.cat([self.up(d2), skip[2]], 1))
        d4 = self.upc4(torch.cat([self.up(d3), skip[1]], 1))
        return self.upc5(torch.cat([self.up(d4), skip[0]], 1))


class _LSTMStack(nn.Module):
    """embed -> stacked LSTMCells; the hidden state is module state, reset by init_hidden."""

    def __init__(self, input_size: int, hidden_size: int, n_layers: int):
        super().__init__()
        self.input_size, self.hidden_size, self.n_layers = input_size, hidden_size, n_layers
        self.embed = nn.Linear(input_size, hidden_size)
        self.lstm = nn.ModuleList([nn.LSTMCell(hidden_size, hidden_size) for _ in range(n_layers)])
        self.hidden: list[tuple[Tensor, Tensor]] = []

    def init_hidden(self, batch_size: int) -> None:
        zeros = torch.zeros(batch_size, self.hidden_size, device=self.embed.weight.device)
        self.hidden = [(zeros, zeros) for _ in range(self.n_layers)]

    def _run(self, x: Tensor) -> Tensor:
        h_in = self.embed(x.view(-1, self.input_size))
        for i, cell in enumerate(self.lstm):
            self.hidden[i] = cell(h_in, self.hidden[i])
            h_in = self.hidden[i][0]
        return h_in


class lstm(_LSTMStack):
    """The frame predictor: ... -> Linear -> BatchNorm1d -> Tanh."""

    def __init__(self, input_size: int, output_size: int, hidden_size: int, n_layers: int):
        super().__init__(input_size, hidden_size, n_layers)
        self.output = nn.Sequential(nn.Linear(hidden_size, output_size), nn.BatchNorm1d(output_size),
                                    nn.Tanh())

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self._run(x))


class gaussian_lstm(_LSTMStack):
    """The posterior q(z_t | x_{1:t}): (z, mu, logvar); `eps` fixes the noise."""

    def __init__(self, input_size: int, output_size: int, hidden_size: int, n_layers: int):
        super().__init__(input_size, hidden_size, n_layers)
        self.mu_net = nn.Linear(hidden_size, output_size)
        self.logvar_net = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        h = self._run(x)
        mu, logvar = self.mu_net(h), self.logvar_net(h)
        eps = torch.randn_like(mu) if eps is None else eps
        return mu + torch.exp(0.5 * logvar) * eps, mu, logvar


class SVG(nn.Module):
    """The four SVG-FP modules SVG trains (it saves them side by side under these names)."""

    def __init__(self, g_dim: int = 128, z_dim: int = 64, rnn_size: int = 256, width: int = 64,
                 predictor_rnn_layers: int = 2, posterior_rnn_layers: int = 1, cond_dim: int = COND_DIM):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = encoder(g_dim, width)
        self.decoder = decoder(g_dim, width)
        self.frame_predictor = lstm(g_dim + z_dim + cond_dim, g_dim, rnn_size, predictor_rnn_layers)
        self.posterior = gaussian_lstm(g_dim, z_dim, rnn_size, posterior_rnn_layers)

    def init_hidden(self, batch_size: int) -> None:
        self.frame_predictor.init_hidden(batch_size)
        self.posterior.init_hidden(batch_size)


def init_weights(m: nn.Module) -> None:
    """SVG's init: Conv*/Linear N(0, 0.02) with zero bias, BatchNorm N(1, 0.02); LSTMCells
    keep PyTorch's default."""
    name = type(m).__name__
    if "Conv" in name or "Linear" in name:
        m.weight.data.normal_(0.0, 0.02)
        m.bias.data.fill_(0)
    elif "BatchNorm" in name:
        m.weight.data.normal_(1.0, 0.02)
        m.bias.data.fill_(0)


def build(g_dim: int = 128, z_dim: int = 64, rnn_size: int = 256, width: int = 64,
          predictor_rnn_layers: int = 2, posterior_rnn_layers: int = 1,
          cond_dim: int = COND_DIM) -> SVG:
    model = SVG(g_dim, z_dim, rnn_size, width, predictor_rnn_layers, posterior_rnn_layers, cond_dim)
    model.apply(init_weights)
    return model.train()


def make_optimizer(model: nn.Module, lr: float = 0.002, beta1: float = 0.9) -> torch.optim.Adam:
    """One Adam over all four modules: the same update as SVG's four Adams with equal settings."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(beta1, 0.999))


def _refresh_skip(t: int, n_past: int, last_frame_skip: bool, skip_compat: bool) -> bool:
    """Step t encodes x_{t-1}; the last context frame x_{n_past-1} is seen at t = n_past."""
    return last_frame_skip or t < n_past + (0 if skip_compat else 1)


def clip_loss(model: SVG, frames: Tensor, cond: Tensor, n_past: int, beta: float,
              eps: Sequence[Tensor] | Tensor | None = None, *, last_frame_skip: bool = False,
              skip_compat: bool = False) -> Tensor:
    """edenton/svg `train()` body with full teacher forcing: sum over t = 1..T-1 of
    MSE(decoder(predictor([h_{t-1}, z_t, c_t]), skip), x_t) + beta * KL(q(z_t) || N(0, I)).
    frames (B, T, 3, 64, 64), cond (B, T, 7); eps[t-1] (B, z_dim) fixes the posterior noise."""
    batch, length = frames.shape[:2]
    model.init_hidden(batch)
    mse_fn = nn.MSELoss()
    mse = kld = frames.new_zeros(())
    skip: list[Tensor] = []
    for t in range(1, length):
        h, new_skip = model.encoder(frames[:, t - 1])
        if _refresh_skip(t, n_past, last_frame_skip, skip_compat):
            skip = new_skip
        h_target = model.encoder(frames[:, t])[0]
        z_t, mu, logvar = model.posterior(h_target, None if eps is None else eps[t - 1])
        h_pred = model.frame_predictor(torch.cat([h, z_t, cond[:, t]], 1))
        x_pred = model.decoder(h_pred, skip)
        mse = mse + mse_fn(x_pred, frames[:, t])
        kld = kld + kl_criterion(mu, logvar, batch)
    return mse + beta * kld


def train_step(model: SVG, optimizer: torch.optim.Optimizer, frames: Tensor, cond: Tensor,
               n_past: int, beta: float, eps: Sequence[Tensor] | Tensor | None = None, *,
               last_frame_skip: bool = False, skip_compat: bool = False) -> float:
    """One SVG training iteration: zero grads, reset hidden states, loss, backward, Adam
    (no gradient clipping, as SVG and the course template)."""
    optimizer.zero_grad()
    loss = clip_loss(model, frames, cond, n_past, beta, eps, last_frame_skip=last_frame_skip,
                     skip_compat=skip_compat)
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def predict(model: SVG, context: Tensor, cond: Tensor, n_future: int,
            eps: Sequence[Tensor] | Tensor | None = None, *, last_frame_skip: bool = False,
            skip_compat: bool = False) -> Tensor:
    """SVG's generation loop: context (B, n_past, 3, 64, 64), cond (B, >= n_past + n_future, 7)
    -> (B, n_future, 3, 64, 64). Over the context z comes from the posterior (which warms
    the LSTM states; no frame is decoded), then from N(0, I). eps[t-1] (B, z_dim) fixes the
    noise of step t. BatchNorm uses running averages (eval mode) as cvae-jax does; the
    model's training mode is restored afterwards."""
    batch, n_past = context.shape[:2]
    was_training = model.training
    model.eval()
    model.init_hidden(batch)
    x_in, skip, out = context[:, 0], [], []
    for t in range(1, n_past + n_future):
        h, new_skip = model.encoder(x_in)
        if _refresh_skip(t, n_past, last_frame_skip, skip_compat):
            skip = new_skip
        noise = None if eps is None else eps[t - 1]
        if t < n_past:
            z_t, _, _ = model.posterior(model.encoder(context[:, t])[0], noise)
            model.frame_predictor(torch.cat([h, z_t, cond[:, t]], 1))
            x_in = context[:, t]
        else:
            z_t = torch.randn(batch, model.z_dim, device=context.device) if noise is None else noise
            x_in = model.decoder(model.frame_predictor(torch.cat([h, z_t, cond[:, t]], 1)), skip)
            out.append(x_in)
    model.train(was_training)
    return torch.stack(out, dim=1)


# --------------------------------------------------------------------------- cvae-jax weights

_RENAME = {"conv": "main.0", "bn": "main.1", "c5_conv": "c5.0", "c5_bn": "c5.1",
           "upc1_kernel": "upc1.0.weight", "upc1_bias": "upc1.0.bias", "upc1_bn": "upc1.1",
           "out_conv": "upc5.1", "cells": "lstm", "w_ih": "weight_ih", "w_hh": "weight_hh",
           "b_ih": "bias_ih", "b_hh": "bias_hh", "scale": "weight", "kernel": "weight",
           "mean": "running_mean", "var": "running_var"}


def _convert(path: tuple[str, ...], a: np.ndarray) -> tuple[str, np.ndarray]:
    module, rest = path[0], list(path[1:])
    if module == "frame_predictor" and rest[0] in ("output", "bn"):
        rest[0] = "output.0" if rest[0] == "output" else "output.1"
    name = ".".join([module] + [_RENAME.get(p, p) for p in rest])
    if path[-1] == "upc1_kernel":  # (dim, 4, 4, out) -> ConvTranspose2d (in=dim, out, 4, 4)
        a = a.transpose(0, 3, 1, 2)
    elif path[-2:] == ("out_conv", "kernel"):  # flipped conv HWIO -> ConvTranspose2d (in, out, 3, 3)
        a = a[::-1, ::-1].transpose(2, 3, 0, 1)
    elif a.ndim == 4:  # conv HWIO -> OIHW
        a = a.transpose(3, 2, 0, 1)
    elif a.ndim == 2:  # Linear / LSTMCell (in, out) -> (out, in)
        a = a.T
    return name, a


def load_jax_params(model: SVG, params: Any) -> SVG:
    """Copy a cvae-jax SVG-FP (the nnx module, with BatchNorm running stats, or its
    `nnx.State` of parameters) into `model`. A learned prior has no counterpart here."""
    flat = flatten_jax(params)
    if any(p[0] == "prior" for p in flat):
        raise ValueError("the torch baseline is SVG-FP; the JAX model has a learned prior")
    assign(model, dict(_convert(p, a) for p, a in flat.items()))
    return model
