"""cvae-jax: conditional stochastic video prediction in JAX/Flax.

Notebook use: `m = load_checkpoint("runs/x")`, then for a lab4 run
`frames = m.generate(first_frame, poses, key)`, for an svg run
`future = m.predict(context, cond, key, n_future=10)`.
"""

from cvae_jax.checkpointing import load_checkpoint
from cvae_jax.config import Config, preset

__all__ = ["Config", "load_checkpoint", "preset"]
