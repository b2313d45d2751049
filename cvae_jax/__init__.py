"""cvae-jax: conditional stochastic video prediction in JAX/Flax.

Notebook use: `m = load_checkpoint("runs/x"); frames = m.generate(first_frame, poses, key)`.
"""

from cvae_jax.checkpointing import load_checkpoint
from cvae_jax.config import Config, preset

__all__ = ["Config", "load_checkpoint", "preset"]
