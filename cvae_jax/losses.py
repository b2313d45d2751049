"""Training objective: reconstruction + beta * KL (+ optional temporal smoothness).

Per predicted frame t the terms are the reference's: MSE averaged over every element of
the batch (`nn.MSELoss()`), and KL summed over every latent element and divided by the
batch size (`kl_criterion`). The clip loss sums these over the T-1 predicted frames, so a
clip's loss does not shrink when clips get longer and each frame weighs the same as in a
per-frame backward pass of the reference. Every term is computed in float32, whatever
the compute precision of the model (`--precision bf16`).
"""

from __future__ import annotations

import jax.numpy as jnp


def _f32(*xs):
    return tuple(x.astype(jnp.float32) for x in xs)


def mse_per_frame(preds, targets):
    """(T, B, ...) -> (T,): mean squared error of each frame over the batch."""
    preds, targets = _f32(preds, targets)
    return jnp.mean(jnp.square(preds - targets), axis=tuple(range(1, preds.ndim)))


def kl_per_frame(mu, logvar):
    """(T, B, ...) -> (T,): KL(q || N(0, I)) summed over latents, divided by batch."""
    mu, logvar = _f32(mu, logvar)
    per = -0.5 * jnp.sum(1 + logvar - jnp.square(mu) - jnp.exp(logvar),
                         axis=tuple(range(1, mu.ndim)))
    return per / mu.shape[1]


def kl_gaussians_per_frame(mu_q, logvar_q, mu_p, logvar_p):
    """(T, B, ...) -> (T,): KL(q || p) between diagonal Gaussians (learned priors)."""
    mu_q, logvar_q, mu_p, logvar_p = _f32(mu_q, logvar_q, mu_p, logvar_p)
    per = 0.5 * (logvar_p - logvar_q + (jnp.exp(logvar_q) + jnp.square(mu_q - mu_p))
                 / jnp.exp(logvar_p) - 1)
    return jnp.sum(per, axis=tuple(range(1, mu_q.ndim))) / mu_q.shape[1]


def temporal_smoothness(preds, targets, first_frame):
    """MSE between predicted and true frame differences, so motion, not only
    appearance, is matched; `first_frame` (B, ...) anchors the first difference."""
    preds, targets, first_frame = _f32(preds, targets, first_frame)
    prev_pred = jnp.concatenate([first_frame[None], preds[:-1]], axis=0)
    prev_true = jnp.concatenate([first_frame[None], targets[:-1]], axis=0)
    return jnp.sum(mse_per_frame(preds - prev_pred, targets - prev_true))
