"""Host-side training schedules: KL beta, teacher forcing and learning rate.

Every function here is pure and closed-form in the epoch/step counter, so a run resumed
from a checkpoint gets exactly the values an uninterrupted run would have had; the values
are passed into jitted code as traced scalars, never baked in as constants.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np

from cvae_jax.errors import ConfigError

KL_ANNEAL_TYPES = ("Cyclical", "Monotonic", "None")
LR_SCHEDULES = ("multistep", "constant", "cosine")
OPTIMIZERS = ("Adam", "AdamW")

# Decimal places kept when a ratio is computed as `start - n * step`: removes the binary
# floating point residue (1.0 - 3 * 0.1 == 0.6999999999999999) so logs and comparisons
# see the intended decimal value.
_RATIO_DECIMALS = 12


def frange_cycle_linear(
    n_iter: int, start: float = 0.0, stop: float = 1.0, n_cycle: int = 1, ratio: float = 1.0
) -> np.ndarray:
    """Fu et al. (2019) cyclical annealing, written as their reference function.

    Kept loop-for-loop (including the float accumulation of `v` and later cycles
    overwriting the tail of earlier ones when the period is fractional) because it is the
    definition `kl_beta` is tested against.
    """
    schedule = np.ones(n_iter) * stop
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio)
    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and int(i + c * period) < n_iter:
            schedule[int(i + c * period)] = v
            v += step
            i += 1
    return schedule


def _check_choice(value: str, choices: tuple[str, ...], flag: str) -> str:
    """Case-insensitive lookup so config files and CLI flags can use any casing."""
    by_lower = {c.lower(): c for c in choices}
    try:
        return by_lower[str(value).lower()]
    except KeyError:
        raise ConfigError(
            f"{flag} must be one of {', '.join(choices)} (any case), got {value!r}"
        ) from None


def _ramp(n_iter: int, n_cycle: int, ratio: float, start: float, stop: float) -> tuple[float, float, int]:
    """(period, step, last i) of one ramp, with the reference's float expressions.

    The last i is the largest with start + i*step <= stop; a hair of tolerance absorbs
    float error when period*ratio is a whole number (the value there is `stop` either way).
    """
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio)
    return period, step, math.floor(period * ratio + 1e-9)


def _cyclical_beta(t: int, n_iter: int, n_cycle: int, ratio: float, start: float, stop: float) -> float:
    """Closed form of frange_cycle_linear(...)[t] for 0 <= t < n_iter.

    Cycle c writes index int(i + c*period) for i = 0..last, and later cycles overwrite
    earlier ones, so index t holds the ramp value of the last cycle whose ramp lands on t,
    else `stop`. Index arithmetic is done in floats exactly as the reference does it
    (e.g. 11 * (30/22) == 14.999999999999998, so that cycle starts at 14, not 15); only
    the last cycle starting at or before t, and its neighbours, can land on t.
    """
    period, step, last = _ramp(n_iter, n_cycle, ratio, start, stop)
    c_exact = ((t + 1) * n_cycle - 1) // n_iter  # last c with floor(c * n_iter / n_cycle) <= t
    for c in range(min(c_exact + 1, n_cycle - 1), max(c_exact - 2, -1), -1):
        offset = c * period
        guess = t - int(offset)
        for i in range(min(guess + 1, last), max(guess - 2, -1), -1):
            if int(i + offset) == t:
                return float(min(stop, start + i * step))
    return float(stop)


def _monotonic_beta(t: int, n_iter: int, n_cycle: int, ratio: float, start: float, stop: float) -> float:
    """The first cycle's ramp (not cut short by the second cycle), then `stop` forever."""
    _, step, last = _ramp(n_iter, n_cycle, ratio, start, stop)
    return float(stop) if t > last else float(min(stop, start + t * step))


def kl_beta(
    anneal_type: str,
    t: int,
    n_iter: int,
    n_cycle: int,
    ratio: float,
    start: float = 0.0,
    stop: float = 1.0,
) -> float:
    """KL weight at epoch or global step `t` (the caller picks the unit and `n_iter`).

    - Cyclical: `frange_cycle_linear(n_iter, start, stop, n_cycle, ratio)[t]`. For
      t >= n_iter the whole n_iter-long schedule repeats (t is taken modulo n_iter); as
      n_iter is exactly n_cycle periods, this continues the cycles in phase.
    - Monotonic: the first cycle of that schedule -- beta rises from `start` by
      (stop - start) / (period * ratio) per unit of t -- then stays at `stop` forever.
      With n_cycle=1 it equals Cyclical on [0, n_iter).
    - None: constant `stop` (beta 1 by default, i.e. the plain ELBO).

    Like the reference, a schedule with start > stop never ramps: it is `stop` throughout.
    O(1) per call: no array is built.
    """
    kind = _check_choice(anneal_type, KL_ANNEAL_TYPES, "--kl_anneal_type")
    if kind == "None":
        return float(stop)
    t, n_iter, n_cycle = operator.index(t), operator.index(n_iter), operator.index(n_cycle)
    if n_iter < 1 or n_cycle < 1:
        raise ValueError(f"need n_iter >= 1 and n_cycle >= 1, got {n_iter=}, {n_cycle=}")
    if not ratio > 0:
        raise ConfigError(f"--kl_anneal_ratio must be > 0, got {ratio}")
    if t < 0:
        raise ValueError(f"t must be >= 0, got {t}")
    if start > stop:
        return float(stop)
    if kind == "Monotonic":
        return _monotonic_beta(t, n_iter, n_cycle, ratio, start, stop)
    return _cyclical_beta(t % n_iter, n_iter, n_cycle, ratio, start, stop)


def teacher_forcing_ratio(
    epoch: int,
    tfr: float = 1.0,
    tfr_sde: int = 10,
    tfr_d_step: float = 0.1,
    tfr_floor: float = 0.0,
) -> float:
    """Teacher-forcing ratio in force during `epoch`, as the reference would have it.

    The reference decays at the end of every epoch, after incrementing the counter to E:
    `if E >= tfr_sde: tfr -= tfr_d_step`. Those updates happen for E = 1..epoch, so the
    number of decays is the count of E in [max(1, tfr_sde), epoch]; with tfr_sde <= 1 the
    first decay lands at epoch 1 (epoch 0 always trains with the initial ratio).
    """
    n_decays = max(0, epoch - max(1, tfr_sde) + 1)
    return max(tfr_floor, round(tfr - tfr_d_step * n_decays, _RATIO_DECIMALS))


@dataclass(frozen=True)
class AdaptiveTFR:
    """Teacher forcing lowered only when the model proves it can cope (val PSNR improves)."""

    ratio: float
    best_psnr: float = -math.inf

    def to_dict(self) -> dict:
        """JSON-safe form for checkpoints: non-finite values (the initial -inf best PSNR)
        are stored as the strings float() reads back, since strict JSON has no inf."""
        return {"ratio": _json_float(self.ratio), "best_psnr": _json_float(self.best_psnr)}

    @classmethod
    def from_dict(cls, d: dict) -> "AdaptiveTFR":
        """Inverse of to_dict; also accepts plain floats (e.g. json's -Infinity)."""
        return cls(ratio=float(d["ratio"]), best_psnr=float(d.get("best_psnr", -math.inf)))


def _json_float(x: float) -> float | str:
    x = float(x)
    return x if math.isfinite(x) else str(x)


def adaptive_tfr_update(state: AdaptiveTFR, val_psnr: float, d_step: float, floor: float) -> AdaptiveTFR:
    """Lower the ratio by d_step (floored) on a new best val PSNR; otherwise keep it.

    A NaN PSNR never counts as an improvement.
    """
    if not val_psnr > state.best_psnr:
        return state
    ratio = max(floor, round(state.ratio - d_step, _RATIO_DECIMALS))
    return AdaptiveTFR(ratio=ratio, best_psnr=float(val_psnr))


def learning_rate(
    kind: str,
    base_lr: float,
    epoch: int,
    step: int,
    total_steps: int,
    milestones: tuple[int, ...] = (2, 5),
    gamma: float = 0.1,
) -> float:
    """Learning rate for this epoch/step.

    - multistep: the reference's MultiStepLR stepped once per epoch,
      base_lr * gamma ** (number of milestones <= epoch); defaults give 1e-3 for epochs
      0-1, 1e-4 for 2-4, 1e-5 from 5 (the reference's resume path used [2, 4]; not kept).
    - constant: base_lr.
    - cosine: half-cosine from base_lr at step 0 to 0 at total_steps (held at 0 after).
    """
    kind = _check_choice(kind, LR_SCHEDULES, "--lr_schedule")
    if kind == "constant":
        return float(base_lr)
    if kind == "multistep":
        n_passed = sum(1 for m in milestones if m <= epoch)
        return float(base_lr * gamma**n_passed)
    if total_steps <= 0:
        raise ValueError(f"cosine --lr_schedule needs total_steps > 0, got {total_steps}")
    progress = min(max(step, 0), total_steps) / total_steps
    return float(base_lr * 0.5 * (1.0 + math.cos(math.pi * progress)))
