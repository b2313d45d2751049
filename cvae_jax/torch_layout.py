"""The course template's `state_dict` names and tensor layouts for a cvae-jax Lab4 model.

One mapping, used both by `cvae_jax.convert` (checkpoint files) and by the PyTorch baseline
of the benchmarks (benchmarks/torch_ref/lab4.py), so the parity tests check the conversion
the commands write. NumPy only: nothing here needs torch.

Names: module prefix from `lab4.TORCH_PREFIXES`, the Sequential index from the `layers`
position (the pose encoder's from `PoseEncoder.TORCH_INDEX`), DepthConvBlock parts as
`block.0` / `block.1`, the DepthConv's first 1x1 conv as `conv1.0` (it sits in a
Sequential with its LeakyReLU in the template). Layouts: conv kernels HWIO <-> OIHW,
depthwise (3, 3, C) <-> (C, 1, 3, 3); vectors as they are. ConvFFN's value/gate split is
the same in both (first half value), so no channel is permuted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from cvae_jax.models.lab4 import TORCH_PREFIXES, PoseEncoder

LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
              "var": "running_var"}
NUM_BATCHES = "num_batches_tracked"  # a BatchNorm buffer cvae-jax does not keep
# Sibling order in the template's modules (registration order, what `state_dict()` lists),
# where it differs from the alphabetical order nnx keeps.
_ORDER = (*TORCH_PREFIXES.values(), "block", "conv1", "depth_conv", "conv2", "skip", "adaptor", "conv",
          "conv_out", "weight", "bias", "running_mean", "running_var", NUM_BATCHES)
# The entries whose output channels give the model's dims: (cvae-jax path, divisor)
DIM_SOURCES = {"F_dim": (("frame_encoder", "layers", 6, "kernel"), 1),
               "L_dim": (("pose_encoder", "res", "conv1", "kernel"), 1),
               "N_dim": (("posterior", "layers", 6, "kernel"), 2),  # mu and logvar
               "D_out_dim": (("fusion", "layers", 5, "kernel"), 1)}
# The encoder widths the template derives from F and L (F/8, F/4, F/2 and L/2) and
# cvae-jax fixes (16, 32, 64 and 16): the output channels of these entries
WIDTH_SOURCES = (("frame_encoder", "layers", 0, "conv1", "kernel"), ("frame_encoder", "layers", 2, "conv1", "kernel"),
                 ("frame_encoder", "layers", 4, "conv1", "kernel"), ("pose_encoder", "conv", "kernel"))

Path = tuple  # a cvae-jax leaf path: module names and layer indices


def torch_name(path: Iterable) -> str:
    """cvae-jax path of a Lab4 leaf (str or int parts) -> the template's state_dict key."""
    path = tuple(str(p) for p in path)
    parts = [TORCH_PREFIXES[path[0]]]
    for i, p in enumerate(path[1:-1], start=1):
        if p == "layers":
            continue
        if path[0] == "pose_encoder" and i == 1:
            parts.append(str(PoseEncoder.TORCH_INDEX[p]))
        elif p in ("depth", "ffn"):
            parts.append("block.0" if p == "depth" else "block.1")
        elif p == "conv1" and path[i - 1] == "depth":
            parts.append("conv1.0")
        else:
            parts.append(p)
    return ".".join(parts + [LEAF_NAMES[path[-1]]])


def template_order(name: str) -> tuple:
    """Sort key putting state_dict keys in the template's registration order."""
    return tuple((0, int(p), "") if p.isdigit() else (1, _ORDER.index(p), p) for p in name.split("."))


def to_torch_layout(a: np.ndarray) -> np.ndarray:
    """HWIO -> OIHW; depthwise (3, 3, C) -> (C, 1, 3, 3); vectors unchanged."""
    if a.ndim == 4:
        return a.transpose(3, 2, 0, 1)
    if a.ndim == 3:
        return a.transpose(2, 0, 1)[:, None]
    return a


def from_torch_layout(a: np.ndarray, jax_ndim: int) -> np.ndarray:
    """Inverse of `to_torch_layout`; `jax_ndim` tells a depthwise kernel (3) from a dense one (4)."""
    if jax_ndim == 4:
        return a.transpose(2, 3, 1, 0)
    if jax_ndim == 3:
        return a[:, 0].transpose(1, 2, 0)
    return a


def torch_shape(jax_shape: tuple[int, ...]) -> tuple[int, ...]:
    return to_torch_layout(np.empty(jax_shape, np.bool_)).shape


def flat(tree: Any) -> dict[Path, Any]:
    """Path -> leaf of an `nnx.State` or a nested dict/list of arrays (paths keep int indices)."""
    from flax import nnx  # only for States

    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(tree)
    out: dict[Path, Any] = {}

    def walk(node: Any, path: Path) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, path + (k,))
        elif isinstance(node, (list, tuple)):
            for k, v in enumerate(node):
                walk(v, path + (k,))
        else:
            out[path] = node

    walk(tree, ())
    return out


def torch_arrays(tree: Any) -> dict[str, np.ndarray]:
    """Lab4 parameters, BatchNorm statistics, or gradients (any tree of them) as
    template-named float32 arrays in the torch layout."""
    return {torch_name(p): to_torch_layout(np.array(a, np.float32)) for p, a in flat(tree).items()}


def torch_state(params: Any, batch_stats: Any, num_batches_tracked: int) -> dict[str, np.ndarray]:
    """The template model's whole `state_dict` as arrays, in its order: parameters, the pose
    BatchNorm's running averages, and its `num_batches_tracked` (which cvae-jax does not
    keep: the caller's count)."""
    arrays = {**torch_arrays(params), **torch_arrays(batch_stats)}
    for name in [n for n in arrays if n.endswith(".running_mean")]:
        arrays[name.rsplit(".", 1)[0] + "." + NUM_BATCHES] = np.array(num_batches_tracked, np.int64)
    return {name: arrays[name] for name in sorted(arrays, key=template_order)}


def expected_shapes(params_like: Any, stats_like: Any) -> dict[str, tuple[int, ...]]:
    """The template's state_dict shapes for a cvae-jax model shaped like these trees
    (arrays or `jax.ShapeDtypeStruct`s), num_batches_tracked included."""
    shapes = {torch_name(p): torch_shape(tuple(a.shape)) for t in (params_like, stats_like)
              for p, a in flat(t).items()}
    for name in [n for n in shapes if n.endswith(".running_mean")]:
        shapes[name.rsplit(".", 1)[0] + "." + NUM_BATCHES] = ()
    return {name: shapes[name] for name in sorted(shapes, key=template_order)}


def from_torch(arrays: Mapping[str, np.ndarray], like: Any) -> Any:
    """A pure nested dict shaped like `like` (an `nnx.State` or nested dict; arrays or
    shape structs) with each leaf taken from its template-named array, in cvae-jax's layout.
    Shapes must already match (`expected_shapes`)."""
    pure: dict = {}
    for path, leaf in flat(like).items():
        node = pure
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = np.array(
            from_torch_layout(np.asarray(arrays[torch_name(path)], np.float32), len(leaf.shape)), order="C")
    return pure


def template_widths(F_dim: int, L_dim: int) -> tuple[int, ...]:
    """The encoder widths the template builds at these dims (WIDTH_SOURCES' order)."""
    return (F_dim // 8, F_dim // 4, F_dim // 2, L_dim // 2)


def widths(shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The encoder widths of a template-named shape table (WIDTH_SOURCES' order)."""
    return tuple(shapes[torch_name(p)][0] for p in WIDTH_SOURCES)
