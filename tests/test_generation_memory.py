"""Memory that must not grow with the number of frames: generation's working memory
(beyond the frames it returns, a 640-frame rollout needs no more than a 64-frame one:
pose features and activations live inside the scan step), and the activations a
`--remat` training step keeps."""

import jax
import jax.numpy as jnp
from flax import nnx

from cvae_jax import kernels
from cvae_jax.config import preset
from cvae_jax.lab4_evaluation import make_generate
from cvae_jax.models import lab4
from cvae_jax.train_step import init_state


def _working_bytes(gen, state, n_frames):
    compiled = gen.lower(state.params, state.batch_stats, (jnp.zeros((1, 8, 16, 3)),
                         jnp.zeros((1, n_frames, 8, 16, 3))), jax.random.key(0)).compile()
    mem = compiled.memory_analysis()
    return mem.temp_size_in_bytes - mem.output_size_in_bytes, mem.output_size_in_bytes


def test_generation_memory_does_not_grow_with_length():
    cfg = preset("lab4").replace(F_dim=8, L_dim=8, N_dim=4, D_out_dim=16, frame_H=8, frame_W=16)
    graphdef, state = init_state(cfg, jax.random.key(0))
    gen = make_generate(graphdef, cfg)
    short, short_out = _working_bytes(gen, state, 64)
    long, long_out = _working_bytes(gen, state, 640)
    assert long_out == 10 * short_out  # the frames themselves do scale
    assert long <= 1.1 * short + 16 * 1024, (short, long)


def test_lab4_remat_memory_hardly_grows_with_the_clip():
    """Under --remat the gradient program's buffers grow with the clip by what each step
    saves (its features), not by the encoders' activations: from 3 to 7 frames, by under
    a tenth of what they grow without it (measured 1 %; 73 % when the encoders ran batched
    outside the rematerialised scan)."""
    cfg = preset("lab4").replace(F_dim=8, L_dim=8, N_dim=4, D_out_dim=16, frame_H=8, frame_W=16, scan_unroll=1)
    graphdef, params, rest = nnx.split(lab4.build(cfg, jax.random.key(0)), nnx.Param, ...)

    def temp_bytes(remat, clip):
        def loss(params, frames):
            return lab4.objective(nnx.merge(graphdef, params, rest), (frames, frames), None,
                                  jax.random.key(3), 0.3, cfg.replace(remat=remat))[0]
        frames = jax.ShapeDtypeStruct((2, clip, 8, 16, 3), jnp.float32)
        # the plan only, never run: XLA's own convolutions and no LLVM optimisation compile
        # 3x faster, and what is rematerialised does not depend on either
        with kernels.conv_impl("xla"):
            lowered = jax.jit(jax.grad(loss)).lower(params, frames)
        return lowered.compile({"xla_backend_optimization_level": 0}).memory_analysis().temp_size_in_bytes

    growth = {remat: temp_bytes(remat, 7) - temp_bytes(remat, 3) for remat in (False, True)}
    assert growth[False] > 0 and growth[True] < 0.1 * growth[False], growth
