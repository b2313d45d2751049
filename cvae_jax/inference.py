"""The notebook object of a restored run: what every model's (`Lab4Model`, `SVGModel`) shares.

`checkpointing.load_checkpoint(run)` returns the model family's subclass, which adds the
model's own entry points (`generate`, `predict`) on top of `compiled`.

Generated frames never leave cvae-jax non-finite unnoticed: `check_finite` stops at the
first NaN or inf frame with a message naming the video and frame, and the model's
`_why_non_finite` says how its inputs differ from the training data. `generate`,
`predict` and `evaluate.py` call it; so should anything else that writes predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from cvae_jax.errors import NonFiniteOutputError
from cvae_jax.train_step import make_model_fn


def check_finite(frames, names: Sequence[str], *, first_index: int = 0, what: str = "frames",
                 explain: Callable[[int], str] | None = None):
    """`frames` (videos, frames, ...) unchanged if every value is finite; otherwise raise
    `NonFiniteOutputError` at the first video with a non-finite frame, naming it (`names`,
    one per video: a batch index, a sequence name) and its first non-finite frame
    (`first_index` is the index in its video of frames[:, 0]). `explain(video)`: why it
    likely happened, appended to the message."""
    frames = np.asarray(frames)
    if len(names) != frames.shape[0]:
        raise ValueError(f"{len(names)} names for {frames.shape[0]} videos")
    bad = ~np.isfinite(frames.reshape(frames.shape[0], frames.shape[1], -1)).all(-1)  # (videos, frames)
    if not bad.any():
        return frames
    v = int(np.argmax(bad.any(1)))
    t = int(np.argmax(bad[v]))
    kind = "NaN" if np.isnan(frames[v, t]).any() else "infinite"
    message = (f"{names[v]}: frame {first_index + t} is the first non-finite frame ({kind}; "
               f"{int(bad[v].sum())} of its {frames.shape[1]} {what} are non-finite)")
    raise NonFiniteOutputError(message + (f". {explain(v)}" if explain else ""))


def feature_shift(images, kernel, bias, running_mean, running_var, pad: int, mode: str = "constant",
                  eps: float = 1e-5) -> np.ndarray:
    """Per output channel of a stride-1 conv followed by BatchNorm: how far the mean of the
    conv's output over `images` (..., H, W, C) lies from the BatchNorm's running mean, in
    running standard deviations. Near 0 for inputs like the training data's; what the
    layer's normalised output averages. Exact without running the conv: the mean output
    is linear in the mean (padded) input image, so it is the kernel's taps times the mean
    image's shifted windows. mode: the padding's (`np.pad`: "constant" zeros, "reflect")."""
    images = np.asarray(images, np.float64)
    mean_image = images.reshape(-1, *images.shape[-3:]).mean(0)
    padded = np.pad(mean_image, [(pad, pad), (pad, pad), (0, 0)], mode=mode)
    kernel = np.asarray(kernel, np.float64)
    kh, kw = kernel.shape[:2]
    ho, wo = padded.shape[0] - kh + 1, padded.shape[1] - kw + 1
    windows = np.array([[padded[i:i + ho, j:j + wo].mean((0, 1)) for j in range(kw)] for i in range(kh)])
    out = np.einsum("ijc,ijco->o", windows, kernel) + np.asarray(bias, np.float64)
    return (out - np.asarray(running_mean, np.float64)) / np.sqrt(np.asarray(running_var, np.float64) + eps)


def trained_input_mean(kernel, bias, running_mean, running_var) -> float | None:
    """The mean pixel value of the images a conv -> BatchNorm layer was trained on, read
    from the BatchNorm's running mean: on images of mean pixel value g the conv's mean
    output is bias + g * (sum of the kernel's taps) per channel (borders aside), which a
    converged running mean equals; g is fitted over the channels. None where the running
    averages have not converged (they start at mean 0, variance 1, and the initial value's
    weight, 0.9^updates, is at most the smallest running variance: more than 0.05 leaves g
    unknown, since a short run's running mean is only a fraction of the data's) or where the
    fit does not explain the running mean (the taps do not separate it from the bias)."""
    if np.min(running_var) > 0.05:
        return None
    taps = np.asarray(kernel, np.float64).sum((0, 1, 2))
    offset = np.asarray(running_mean, np.float64) - np.asarray(bias, np.float64)
    if not taps @ taps > 0:
        return None
    g = float(offset @ taps / (taps @ taps))
    explained = 1 - np.sum((offset - g * taps) ** 2) / max(float(offset @ offset), 1e-30)
    return g if explained > 0.9 else None


def value_range(x) -> str:
    x = np.asarray(x)
    return f"[{np.min(x):.3g}, {np.max(x):.3g}]"


class Restored:
    """A restored model: `config`, `params`, `batch_stats`, checkpoint `meta`, run `path`."""

    def __init__(self, cfg, graphdef, params, batch_stats, meta: dict, path):
        self.config, self.params, self.batch_stats, self.meta, self.path = cfg, params, batch_stats, meta, path
        self._graphdef, self._compiled = graphdef, {}

    def compiled(self, fn, cfg=None, cache_key=None):
        """`fn(model, inputs, key)` jitted at `cfg` (default: the run's), compiled once
        per `cache_key`; call the result as `f(inputs, key)`."""
        cfg = cfg or self.config
        cache_key = (fn if cache_key is None else cache_key, cfg)
        if cache_key not in self._compiled:
            self._compiled[cache_key] = make_model_fn(self._graphdef, cfg, fn)
        call = self._compiled[cache_key]
        return lambda inputs, key: np.asarray(call(self.params, self.batch_stats, inputs, key))

    def check_finite(self, frames, names: Sequence[str], inputs: Sequence, first_index: int = 0,
                     what: str = "frames"):
        """`check_finite` with this model's account of why: `inputs` are the model's
        inputs, batched like `frames` (Lab4: first frames, poses; SVG: context, cond)."""
        return check_finite(frames, names, first_index=first_index, what=what,
                            explain=lambda v: self._why_non_finite(*(np.asarray(x)[v] for x in inputs)))

    def _why_non_finite(self, *inputs) -> str:
        """One video's inputs -> why its output is likely not finite (the model's override
        compares them with the training data)."""
        return self._broken_inputs_or_params(*inputs) or "No cause found in the inputs or parameters."

    def _broken_inputs_or_params(self, *inputs) -> str | None:
        bad = [k for k, x in zip(("params", "batch_stats"), (self.params, self.batch_stats))
               if not all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree_util.tree_leaves(x))]
        if bad:
            return (f"The restored checkpoint holds non-finite {' and '.join(bad)} ({self.path}): the "
                    "run diverged before it was saved; restore an earlier or the best checkpoint.")
        if not all(np.isfinite(x).all() for x in inputs):
            return "The inputs hold NaN or inf values."
        return None

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        offered = sorted(n for n in dir(type(self)) if not n.startswith("_"))
        raise AttributeError(f"{type(self).__name__} (a --model {self.config.model} run, {self.path}) has no "
                             f"{name!r}; it offers {offered}")
