"""Generation runs in bounded memory: beyond the frames it returns, a 640-frame rollout
needs no more working memory than a 64-frame one (pose features and activations live
inside the scan step, not stacked over time)."""

import jax
import jax.numpy as jnp

from cvae_jax.config import Config
from cvae_jax.train_step import init_state, make_generate


def _working_bytes(gen, state, n_frames):
    compiled = gen.lower(state.params, state.batch_stats, jnp.zeros((1, 8, 16, 3)),
                         jnp.zeros((1, n_frames, 8, 16, 3)), jax.random.key(0)).compile()
    mem = compiled.memory_analysis()
    return mem.temp_size_in_bytes - mem.output_size_in_bytes, mem.output_size_in_bytes


def test_generation_memory_does_not_grow_with_length():
    cfg = Config(F_dim=8, L_dim=8, N_dim=4, D_out_dim=16, frame_H=8, frame_W=16)
    graphdef, state = init_state(cfg, jax.random.key(0))
    gen = make_generate(graphdef, cfg)
    short, short_out = _working_bytes(gen, state, 64)
    long, long_out = _working_bytes(gen, state, 640)
    assert long_out == 10 * short_out  # the frames themselves do scale
    assert long <= 1.1 * short + 16 * 1024, (short, long)
