"""The notebook object of a restored run: what every model's (`Lab4Model`, `SVGModel`) shares.

`checkpointing.load_checkpoint(run)` returns the model family's subclass, which adds the
model's own entry points (`generate`, `predict`) on top of `compiled`.
"""

from __future__ import annotations

import numpy as np

from cvae_jax.train_step import make_model_fn


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

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        offered = sorted(n for n in dir(type(self)) if not n.startswith("_"))
        raise AttributeError(f"{type(self).__name__} (a --model {self.config.model} run, {self.path}) has no "
                             f"{name!r}; it offers {offered}")
