"""Run folders, orbax checkpoints, and the notebook entry point `load_checkpoint`.

A run folder holds `config.json` (the resolved config), `checkpoints/` (the last k),
`best/` (the best by validation PSNR), `metrics.jsonl`, plots and GIFs. Each checkpoint
holds the whole training state (params, BatchNorm statistics, optimizer state, step) and
a JSON `meta` item (epoch, step within it, base RNG key, schedule state), so a resumed
run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from cvae_jax.config import Config
from cvae_jax.errors import RunFolderError
from cvae_jax.train_step import init_state, make_generate, make_predict

CONFIG_FILE = "config.json"


def save_config(run_dir: pathlib.Path, cfg: Config) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_json(), indent=2) + "\n")


def load_config(run_dir) -> Config:
    path = pathlib.Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunFolderError(f"{path} not found: is {run_dir} a cvae-jax run folder "
                             "(made by train.py)?")
    return Config.from_json(json.loads(path.read_text()))


def managers(run_dir: pathlib.Path, keep_last: int) -> tuple[ocp.CheckpointManager, ocp.CheckpointManager]:
    """(last-k manager, best-by-validation-PSNR manager).

    Each has its own barrier names: in a multi-process run both save the same step
    asynchronously, and orbax names its cross-process barriers by step alone, so two
    managers on one step would join each other's barriers (and fail when they overlap)."""
    run_dir = pathlib.Path(run_dir).absolute()

    def options(name: str, **kw) -> ocp.CheckpointManagerOptions:
        return ocp.CheckpointManagerOptions(
            create=True, multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name),
            **kw)

    last = ocp.CheckpointManager(run_dir / "checkpoints", item_names=("state", "meta"),
                                 options=options("last", max_to_keep=keep_last))
    best = ocp.CheckpointManager(run_dir / "best", item_names=("state", "meta"),
                                 options=options("best", max_to_keep=1, best_fn=lambda m: m["val_psnr"],
                                                 best_mode="max", keep_checkpoints_without_metrics=False))
    return last, best


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict, metrics=None) -> None:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)),
                 metrics=metrics)


def abstract_state(cfg: Config):
    """(graphdef, the training state's shapes and dtypes on the first local device): a
    restore target without initialising a model (eager initialisation compiles a small
    program per parameter shape)."""
    graphdef, shapes = jax.eval_shape(lambda key: init_state(cfg, key), jax.random.key(0))
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return graphdef, jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def restore(manager: ocp.CheckpointManager, like, step: int | None = None):
    """(state, meta) of `step` (default: latest), restored onto the local devices with
    the structure, dtypes and placement of `like` (arrays or `abstract_state`'s shapes)."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise RunFolderError(f"no checkpoint in {manager.directory}")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                        meta=ocp.args.JsonRestore()))
    return out.state, out.meta


def key_to_json(key) -> list[int]:
    return np.asarray(jax.random.key_data(key)).tolist()


def key_from_json(data) -> jax.Array:
    return jax.random.wrap_key_data(np.asarray(data, np.uint32))


class Generator:
    """A restored model, ready to generate.

    lab4: `frames = m.generate(first_frame, poses, key)`;
    svg:  `future = m.predict(context, cond, key, n_future=10)`.
    """

    def __init__(self, cfg: Config, graphdef, params, batch_stats, meta: dict, path):
        self.config, self.params, self.batch_stats, self.meta, self.path = (
            cfg, params, batch_stats, meta, path)
        self._graphdef, self._generate, self._predict = graphdef, {}, {}

    def _require(self, model: str, method: str) -> None:
        if self.config.model != model:
            other = "predict(context, cond, key)" if model == "lab4" else "generate(first_frame, poses, key)"
            raise TypeError(f"{method} is for --model {model} runs; {self.path} holds a "
                            f"{self.config.model} model: use {other}")

    def predict(self, context, cond, key=None, n_future: int | None = None,
                z_mode: str | None = None) -> np.ndarray:
        """SVG: context (n_past, 64, 64, 3) and cond (>= n_past + n_future, 7), optionally
        batched, floats (frames in [0, 1]); returns the n_future predicted frames."""
        self._require("svg", "predict")
        cfg = self.config
        context, cond = np.asarray(context, np.float32), np.asarray(cond, np.float32)
        single = context.ndim == 4
        if single:
            context, cond = context[None], cond[None]
        n_future = n_future or cfg.n_future
        if (context.ndim != 5 or context.shape[1:] != (cfg.n_past, 64, 64, 3) or cond.ndim != 3
                or cond.shape[0] != context.shape[0] or cond.shape[2] != 7
                or cond.shape[1] < cfg.n_past + n_future):
            raise ValueError(f"expected context ({cfg.n_past}, 64, 64, 3) and cond (>= {cfg.n_past + n_future}, 7) "
                             f"(optionally batched), got {context.shape} and {cond.shape}")
        opts = (n_future, z_mode or cfg.z_mode)
        if opts not in self._predict:
            self._predict[opts] = make_predict(self._graphdef, cfg, n_future=opts[0], z_mode=opts[1])
        key = jax.random.key(0) if key is None else key
        out = np.asarray(self._predict[opts](self.params, self.batch_stats, (context, cond), key))
        return out[0] if single else out

    def generate(self, first_frame, poses, key=None, z_mode: str | None = None) -> np.ndarray:
        """first_frame (H, W, 3) or (B, H, W, 3) and poses (T, H, W, 3) or (B, T, H, W, 3),
        floats in [0, 1] at the model's frame size. Returns frames shaped like the poses,
        with the first frame at index 0."""
        self._require("lab4", "generate")
        first_frame, poses = np.asarray(first_frame, np.float32), np.asarray(poses, np.float32)
        single = poses.ndim == 4
        if single:
            first_frame, poses = first_frame[None], poses[None]
        h, w = self.config.frame_H, self.config.frame_W
        if poses.shape[2:] != (h, w, 3) or first_frame.shape != (poses.shape[0], h, w, 3):
            raise ValueError(f"expected first_frame ({h}, {w}, 3) and poses (T, {h}, {w}, 3) "
                             f"(optionally batched), got {first_frame.shape} and {poses.shape}")
        mode = z_mode or self.config.z_mode
        if mode not in self._generate:
            self._generate[mode] = make_generate(self._graphdef, self.config.replace(z_mode=mode))
        key = jax.random.key(0) if key is None else key
        out = np.asarray(self._generate[mode](self.params, self.batch_stats, first_frame, poses, key))
        return out[0] if single else out


def load_checkpoint(run_dir, which: str = "best") -> Generator:
    """Restore a run's model for generation on whatever devices this machine has.

    which: "best" (by validation PSNR; falls back to the latest when no validation ran)
    or "latest". Needs nothing but the run folder.
    """
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    run_dir = pathlib.Path(run_dir)
    cfg = load_config(run_dir)
    graphdef, template = abstract_state(cfg)
    last, best = managers(run_dir, cfg.keep_last)
    manager = best if which == "best" and best.latest_step() is not None else last
    state, meta = restore(manager, template)
    return Generator(cfg, graphdef, state.params, state.batch_stats, meta, run_dir)
