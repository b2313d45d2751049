"""The Lab4 training step's GEMM shapes alone: XLA (as cvae-jax compiles for CPU) against PyTorch.

Why: the Lab4 step's forward passes run level with PyTorch and its backward passes do not
(benchmarks/NOTES.md, "Where the Lab4 step's time goes"). Most of a backward pass is GEMMs, so this times the step's GEMMs
one by one, outside any model, with the compiler options of the training step: if XLA's
GEMMs are slower than PyTorch's library on the same shapes, no rewrite of the model
closes the gap. Shapes, as (M, K, N) with M x K times K x N:
* forward / input gradient of the generator's widest 1x1 layers at batch 2 (K = channels);
* weight gradients (`At`: the contraction runs over the 4,096 pixels of a step, or the
  61,440 of a clip as `--batched_wgrad` batches them), A stored pixel-major as the
  activations are.

    python benchmarks/gemm.py --repeats 10
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# as in compare.py: XLA's Eigen thread pool would slow PyTorch in this process
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import _timing as tm  # noqa: E402
from cvae_jax import kernels  # noqa: E402

# (label, M, K, N, A transposed): pixels = 2 x 32 x 64 = 4096 per step, 15 steps per clip
SHAPES = [
    ("fwd 192->768 (FFN in)", 4096, 192, 768, False),
    ("dx 768->192", 4096, 768, 192, False),
    ("fwd 192->192", 4096, 192, 192, False),
    ("dW 192x768, one step", 192, 4096, 768, True),
    ("dW 768x192, one step", 768, 4096, 192, True),
    ("dW 64x128, one step", 64, 4096, 128, True),
    ("dW 192x768, whole clip", 192, 61440, 768, True),
]


def _rounds(jax_fn, torch_fn, repeats: int, rounds: int = 5) -> tuple[list[float], list[float]]:
    """Alternating blocks of back-to-back calls, not single calls: after a call of a few
    milliseconds each framework's worker threads still spin for a while (OpenMP's wait
    policy, XLA's pool) and would take the cores from the other's next call."""
    jax_s, torch_s = [], []
    for _ in range(rounds):
        for fn, out in ((jax_fn, jax_s), (torch_fn, torch_s)):
            fn(), fn()
            out.extend(tm.timed(fn) for _ in range(repeats))
    return jax_s, torch_s


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=10, help="calls per block (5 blocks each)")
    p.add_argument("--torch_threads", type=int, default=None, help="default: all cores")
    a = p.parse_args(argv)
    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    rng = np.random.default_rng(0)
    rows = []
    for label, m, k, n, transposed in SHAPES:
        lhs = rng.standard_normal((k, m) if transposed else (m, k)).astype(np.float32)
        rhs = rng.standard_normal((k, n)).astype(np.float32)
        dims = (((0,), (0,)), ((), ())) if transposed else (((1,), (0,)), ((), ()))
        jl, jr = jax.device_put(lhs), jax.device_put(rhs)
        dot = jax.jit(lambda x, y: jax.lax.dot_general(x, y, dims),
                      compiler_options=kernels.XLA_CPU_OPTIONS).lower(jl, jr).compile()
        tl, tr = torch.from_numpy(lhs), torch.from_numpy(rhs)
        jax_s, torch_s = _rounds(lambda: dot(jl, jr).block_until_ready(),
                                 lambda: (tl.T if transposed else tl) @ tr, a.repeats)
        flop = 2.0 * m * k * n
        rows.append(dict(label=label, m=m, k=k, n=n, jax_s=tm.median(jax_s), torch_s=tm.median(torch_s)))
        r = rows[-1]
        print(f"{label:<24} {m:>5}x{k:<5}x{n:<4} XLA {r['jax_s'] * 1e3:7.2f} ms {flop / r['jax_s'] / 1e9:5.0f} GF/s"
              f"   PyTorch {r['torch_s'] * 1e3:7.2f} ms {flop / r['torch_s'] / 1e9:5.0f} GF/s"
              f"   ratio {r['jax_s'] / r['torch_s']:.2f}", flush=True)
    info = tm.cpu_info()
    print(f"{tm.now()}, {info['model']}, {info['cores']} cores, torch threads {torch.get_num_threads()}, "
          f"median of 5 alternating blocks of {a.repeats} calls")
    return rows


if __name__ == "__main__":
    main()
