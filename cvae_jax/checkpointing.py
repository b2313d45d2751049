"""Run folders, orbax checkpoints, and the notebook entry point `load_checkpoint`.

A run folder holds `config.json` (the resolved config, `config.CONFIG_VERSION`; a file
without a version is version 1 and loads too), `checkpoints/` (the last k),
`best/` (the best by validation PSNR), `metrics.jsonl` (epochs), `steps.jsonl` (every
`--log_every` steps), TensorBoard event files, plots and GIFs. Each checkpoint
holds the whole training state (params, BatchNorm statistics, optimizer state, step) and
a JSON `meta` item (epoch, step within it, base RNG key, schedule state), so a resumed
run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from cvae_jax import distributed, models
from cvae_jax.config import Config
from cvae_jax.errors import ConfigError, RunFolderError
from cvae_jax.train_step import init_state

CONFIG_FILE = "config.json"


def save_config(run_dir: pathlib.Path, cfg: Config) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_json(), indent=2) + "\n")


def load_config(run_dir) -> Config:
    path = pathlib.Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunFolderError(f"{path} not found: is {run_dir} a cvae-jax run folder "
                             "(made by train.py)?")
    try:
        return Config.from_json(json.loads(path.read_text()))
    except (ConfigError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from e


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


def check_room(run_dir, state, keep_last: int) -> None:
    """Refuse, before training, a run folder that cannot be written or whose disk cannot
    hold its checkpoints (the last `keep_last` and the best, each the size of `state`)."""
    run_dir = pathlib.Path(run_dir)
    existing = next((p for p in [run_dir, *run_dir.parents] if p.exists()), None)
    problem = None
    if existing is not None and not existing.is_dir():
        problem = f"{existing} is not a folder"
    elif existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    if problem is None:
        need = (keep_last + 2) * sum(x.nbytes for x in jax.tree.leaves(state))
        free = shutil.disk_usage(existing).free
        if free < need:
            problem = f"its disk has {free / 2**20:.1f} MiB free, its checkpoints need about {need / 2**20:.1f} MiB"
    if problem:
        raise RunFolderError(f"--save_root: cannot write the run folder {run_dir}: {problem}")


def has_checkpoint(run_dir) -> bool:
    """Whether `run_dir` holds a run that can continue (a config and a checkpoint folder)."""
    ckpts = pathlib.Path(run_dir) / "checkpoints"
    return (pathlib.Path(run_dir) / CONFIG_FILE).is_file() and ckpts.is_dir() and any(ckpts.iterdir())


def restore_latest_complete(manager: ocp.CheckpointManager, like, log=print):
    """(state, meta, step) of the newest checkpoint that restores. A checkpoint damaged
    after its commit (a truncated or missing file) is reported, moved to `damaged/` beside
    the checkpoint folder (so the continued run can save that step again), and the one
    before it used; orbax itself never lists a save that did not commit."""
    steps = sorted(manager.all_steps(), reverse=True)
    folder = pathlib.Path(manager.directory)
    for n, step in enumerate(steps):
        try:
            state, meta = restore(manager, like, step)
        except Exception as e:  # orbax/tensorstore raise many kinds for a damaged folder
            problem = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            aside = folder.parent / "damaged" / f"{folder.name}_{step}"
            if jax.process_index() == 0:
                aside.parent.mkdir(exist_ok=True)
                (folder / str(step)).rename(aside)
            log(f"checkpoint {step} in {folder} cannot be restored ({problem}); moved to {aside}"
                + (f"; falling back to checkpoint {steps[n + 1]}" if n + 1 < len(steps) else ""))
            continue
        if n:  # every process failed on the same steps; all see them moved before going on
            distributed.sync("cvae_jax: damaged checkpoints moved")
            manager.reload()
        return state, meta, step
    raise RunFolderError(f"no checkpoint in {manager.directory} can be restored"
                         + (f" (tried {steps})" if steps else ""))


def key_to_json(key) -> list[int]:
    return np.asarray(jax.random.key_data(key)).tolist()


def key_from_json(data) -> jax.Array:
    return jax.random.wrap_key_data(np.asarray(data, np.uint32))


def restore_run(run_dir, which: str = "best"):
    """(config, graphdef, training state, meta) of a run's best checkpoint (by validation
    PSNR; the latest when no validation ran) or its latest, on this machine's devices."""
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    run_dir = pathlib.Path(run_dir)
    cfg = load_config(run_dir)
    graphdef, template = abstract_state(cfg)
    last, best = managers(run_dir, cfg.keep_last)
    manager = best if which == "best" and best.latest_step() is not None else last
    state, meta = restore(manager, template)
    return cfg, graphdef, state, meta


def write_run(run_dir, cfg: Config, state, meta: dict) -> None:
    """A run folder as the trainer leaves it after a checkpoint at `state.step`: config,
    the checkpoint, an empty best/ and metrics.jsonl (no epoch was logged here)."""
    run_dir = pathlib.Path(run_dir)
    save_config(run_dir, cfg)
    last, best = managers(run_dir, cfg.keep_last)
    save(last, int(state.step), state, meta)
    last.wait_until_finished()
    last.close()
    best.close()
    (run_dir / "metrics.jsonl").write_text("")


def load_checkpoint(run_dir, which: str = "best"):
    """Restore a run's model for generation on whatever devices this machine has: the
    model's notebook object (`Lab4Model.generate`, `SVGModel.predict`; `inference.Restored`).

    which: "best" (by validation PSNR; falls back to the latest when no validation ran)
    or "latest". Needs nothing but the run folder.
    """
    cfg, graphdef, state, meta = restore_run(run_dir, which)
    return models.family(cfg.model).restored(cfg, graphdef, state.params, state.batch_stats, meta,
                                             pathlib.Path(run_dir))
