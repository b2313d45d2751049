"""Shared test setup.

The package is not installed, so the repository root goes on sys.path. XLA's CPU compiler
is the slow part of these tests (tens of seconds per training step even at toy sizes),
so a persistent compilation cache is switched on for the session: identical programs
compiled by later tests, or by the subprocesses the training tests start, are loaded
instead of recompiled. It changes compile time only, never results.

The cache lives where train.py keeps its own, `$CVAE_JAX_CACHE/xla`, when CVAE_JAX_CACHE
is set (CI points it into the checkout, so reruns in one checkout reuse it);
otherwise in a temporary folder removed at exit, so tests never write to ~/.cache.
CVAE_JAX_TEST_XLA_CACHE=off disables it.

The tests also compile with XLA's backend optimisation level 1 instead of 2 (set in
XLA_FLAGS, so the training subprocesses inherit it): most of a compile is LLVM optimising
thousands of small generated kernels, and level 1 compiles the toy steps much faster with
the same results to the last bit. Level 0 is faster still, but its SVG programs produce
NaNs that levels 1 and 2 do not, so not 0. And XLA CPU's older loop emitters instead of
its MLIR fusion emitters, which compile the toy steps faster; tests only, since at Lab4's
reference dims they compile slower, so train.py keeps XLA's default.

The toy configs also compile with `scan_unroll=1`: an unrolled loop puts the scan body in
the program once per step, and compile time grows with it. That unrolling changes no
result is tested on its own (test_rollout_losses, test_deferred).

Measurements of all three: benchmarks/NOTES.md, "Test suite compile settings".

CVAE_JAX_TEST_XLA_OPT=default, or a level already in XLA_FLAGS, keeps XLA's own settings.
"""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _cache_root() -> pathlib.Path:
    if os.environ.get("CVAE_JAX_CACHE"):
        return pathlib.Path(os.environ["CVAE_JAX_CACHE"]).expanduser()
    root = tempfile.mkdtemp(prefix="cvae_jax_test_cache_")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    # Exported, so pytest-xdist's workers (started after this) and every train.py they run
    # use this folder too: XLA's cache key includes a path under the cache folder
    # (`xla_gpu_per_fusion_autotune_cache_dir`, even on CPU), so a worker's own temporary
    # folder made its subprocesses recompile what the worker had compiled.
    os.environ["CVAE_JAX_CACHE"] = root
    return pathlib.Path(root)


# Root for subprocesses' CVAE_JAX_CACHE: train.py then compiles into the same XLA cache.
CACHE_ROOT = _cache_root()


def _setup_compilation_cache() -> None:
    if os.environ.get("CVAE_JAX_TEST_XLA_CACHE") == "off" or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    cache = str(CACHE_ROOT / "xla")
    os.environ.update({"JAX_COMPILATION_CACHE_DIR": cache,  # read by jax at import, here
                       "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # and in subprocesses
                       "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"})
    if "jax" in sys.modules:  # imported already (e.g. by a plugin): set it directly
        import jax
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


_setup_compilation_cache()

TEST_XLA_FLAGS = "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false"


def _setup_xla_flags() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("CVAE_JAX_TEST_XLA_OPT") != "default" and "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {TEST_XLA_FLAGS}".strip()  # read when jax starts its CPU backend


_setup_xla_flags()

# Toy dimensions shared by the model tests: every reference ratio (N/4, (F+L+N)/4, D/16)
# stays an integer, and compiles take seconds instead of minutes.
TINY_DIMS = dict(F_dim=8, L_dim=8, N_dim=4, D_out_dim=16)


def random_module(factory, seed: int = 0):
    """`factory()`'s module with random weights, built without running its initialisers.

    Eager initialisation compiles one random-number program per parameter shape
    (tens of seconds for a toy Lab4 model); the tests check what the network computes,
    which any weights show, so they are drawn with numpy at a PyTorch-like scale
    (|w| <= 1/sqrt(fan_in)) to keep activations O(1). BatchNorm running variances are
    drawn positive.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(nnx.eval_shape(factory))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-2].key if hasattr(path[-2], "key") else str(path[-2])
        shape = leaf.shape
        if name in ("var", "scale"):
            values = rng.uniform(0.5, 1.5, shape)
        elif name in ("mean", "bias"):
            values = rng.uniform(-0.1, 0.1, shape)
        else:  # conv kernels: HWIO, or depthwise (3, 3, C)
            fan_in = int(np.prod(shape[:-1])) if len(shape) == 4 else 9
            values = rng.uniform(-1, 1, shape) / np.sqrt(fan_in)
        return jnp.asarray(values, jnp.float32)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, state))


def random_model(seed: int = 0, output_sigmoid: bool = False, **dims):
    """A toy-size (TINY_DIMS unless overridden) Lab4CVAE with random weights."""
    from flax import nnx

    from cvae_jax.models.lab4 import Lab4CVAE

    dims = {**TINY_DIMS, **dims}
    return random_module(lambda: Lab4CVAE(**dims, output_sigmoid=output_sigmoid, rngs=nnx.Rngs(0)), seed)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def keep_cache_config():
    """The commands switch on train.py's compilation cache; put the suite's back."""
    import jax
    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    yield
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])


def exit_and_stderr(main, argv, capsys) -> tuple[int, str]:
    """A command that must stop: its exit status and what it wrote to stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code, capsys.readouterr().err
