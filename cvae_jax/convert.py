"""`cvae-jax-convert`: Lab4 models between cvae-jax run folders and the course template.

    cvae-jax-convert to-torch RUN OUT.ckpt     # the course Tester.py loads OUT.ckpt
    cvae-jax-convert from-torch CKPT --out RUN  # evaluate.py --run RUN, notebooks, train.py --resume

to-torch writes what the template's `save()` writes: {"state_dict", "optimizer", "lr",
"tfr", "last_epoch"}, the state_dict with the template's 209 names, order and OIHW layouts
(`torch_layout`), the pose BatchNorm's running averages and a `num_batches_tracked` of one
update per predicted frame per applied step, as cvae-jax makes them. The template stores
the model's state_dict again under "optimizer" (its Trainer never reads it back), so this
does too: Adam's moments have no place in the format. lr and tfr are the values of the
run's last completed epoch, which the template saves before stepping them.

from-torch reads the dims from the tensor shapes and writes a run folder as train.py
leaves it: the lab4 preset with those dims (and any config flag given), the weights and
running averages, a fresh Adam state and epoch `last_epoch + 1`.

Only these commands need PyTorch (the torch extra), imported when they run. Bad input is
one line, exit 2, before anything is written; files are written under a temporary name
and renamed, so a failed command leaves nothing behind.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cvae_jax import checkpointing, schedules, torch_layout
from cvae_jax.cli import add_config_flags, given_flags, input_errors_as_usage
from cvae_jax.config import Config, preset
from cvae_jax.errors import CheckpointFileError, ConfigError, InputError, RunExistsError, RunFolderError

TEMPLATE_KEYS = ("state_dict", "optimizer", "lr", "tfr", "last_epoch")
INSTALL = "pip install 'cvae-jax[torch]'"
REFERENCE_WIDTHS_AT = "F_dim 128, L_dim 32"  # where template_widths equals cvae-jax's fixed widths


def _torch():
    """torch, imported only by the commands that need it."""
    try:
        import torch
    except ImportError:
        raise InputError(f"the convert commands need PyTorch: {INSTALL}") from None
    return torch


def _check_new(out: pathlib.Path, flag: str, error: type[InputError]) -> None:
    """Refuse an output path that exists or whose folder cannot take it, before any work."""
    if out.exists() or out.is_symlink():
        raise RunExistsError(f"{flag} {out} already exists; choose a new path (nothing was written)")
    parent = out.parent
    if not parent.is_dir():
        raise error(f"{flag} {out}: " + (f"{parent} is not a folder" if parent.exists()
                                          else f"the folder {parent} does not exist"))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise error(f"{flag} {out}: the folder {parent} is not writable")


def _write_new(out: pathlib.Path, write: Callable[[pathlib.Path], None], flag: str,
               error: type[InputError]) -> None:
    """`write(tmp)` into a temporary sibling of `out`, then rename it to `out`: a failed or
    interrupted write leaves nothing under `out`'s name (and no temporary)."""
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        write(tmp)
        os.rename(tmp, out)
    except OSError as e:
        raise error(f"{flag} {out}: cannot write it ({e.strerror or e})") from e
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _shape_text(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _dims_text(dims: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in dims.items())


# --------------------------------------------------------------------------- to-torch


def template_schedule(cfg: Config, meta: dict, step: int) -> tuple[float, float, int]:
    """(lr, tfr, last_epoch) as the template's save() records them at the end of an epoch:
    the last completed epoch and the learning rate and teacher-forcing ratio in force
    during it (the template steps both after saving)."""
    last = max(int(meta.get("epoch", 0)) - 1, 0)
    total = int(meta.get("schedule_steps") or 0) or max(step, 1)
    lr = schedules.learning_rate(cfg.lr_schedule, cfg.lr, last, max(step - 1, 0), total,
                                 cfg.lr_milestones, cfg.lr_gamma)
    if cfg.tfr_adaptive and meta.get("adaptive_tfr"):
        tfr = schedules.AdaptiveTFR.from_dict(meta["adaptive_tfr"]).ratio
    else:
        tfr = schedules.teacher_forcing_ratio(last, cfg.tfr, cfg.tfr_sde, cfg.tfr_d_step, cfg.tfr_floor)
    return float(lr), float(tfr), last


def _check_template_can_load(cfg: Config, run, allow_sigmoid: bool) -> None:
    """Refuse runs the course template cannot rebuild: another model, encoder widths the
    template would not build at these dims, an output sigmoid it does not apply, the scene
    copy it does not make."""
    if cfg.model != "lab4":
        raise ConfigError(f"{run} is a --model {cfg.model} run; the course template's checkpoint holds "
                          "the Lab4 model only")
    if cfg.arch.extensions():
        flags = ", ".join(f"--{n}" for n in cfg.arch.extensions())
        raise ConfigError(f"{run} was trained with {flags}, extensions of the course model the template's "
                          "Tester does not compute, so it would generate other frames")
    _, like = checkpointing.abstract_state(cfg)
    ours = torch_layout.widths(torch_layout.expected_shapes(like.params, like.batch_stats))
    theirs = torch_layout.template_widths(cfg.F_dim, cfg.L_dim)
    if ours != theirs:
        raise ConfigError(f"{run} has --F_dim {cfg.F_dim} --L_dim {cfg.L_dim}: its encoder widths are {ours}, the "
                          f"course template builds {theirs} at these dims (F/8, F/4, F/2, L/2), so its "
                          f"Tester could not load it; only runs at {REFERENCE_WIDTHS_AT} convert")
    if cfg.output_sigmoid and not allow_sigmoid:
        raise ConfigError(f"{run} was trained with --output_sigmoid; the course template's Generator has no "
                          "output activation, so its Tester would generate other frames. Add torch.sigmoid "
                          "after the template's Generator and convert with --allow_sigmoid")


def to_torch(run, out, which: str = "best", allow_sigmoid: bool = False, log=print) -> pathlib.Path:
    """Write `run`'s best (or latest) checkpoint as the course template's checkpoint file."""
    out = pathlib.Path(out)
    cfg = checkpointing.load_config(run)
    _check_template_can_load(cfg, run, allow_sigmoid)
    _check_new(out, "OUT", CheckpointFileError)
    torch = _torch()
    cfg, _, state, meta = checkpointing.restore_run(run, which)
    step = int(state.step)
    arrays = torch_layout.torch_state(state.params, state.batch_stats, step * (cfg.train_vi_len - 1))
    state_dict = OrderedDict((k, torch.from_numpy(np.array(v, order="C"))) for k, v in arrays.items())
    lr, tfr, last_epoch = template_schedule(cfg, meta, step)
    ckpt = {"state_dict": state_dict, "optimizer": OrderedDict(state_dict), "lr": lr, "tfr": tfr,
            "last_epoch": last_epoch}

    def write(tmp: pathlib.Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)

    _write_new(out, write, "OUT", CheckpointFileError)
    log(f"wrote {out}: the course template's checkpoint of {run} ({which} checkpoint, step {step}; "
        f"{len(state_dict)} state_dict entries, last_epoch {last_epoch}, lr {lr:g}, tfr {tfr:g})")
    return out


# --------------------------------------------------------------------------- from-torch


def read_template_checkpoint(path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(state_dict as float32 arrays without num_batches_tracked, the other entries) of a
    course checkpoint, or of a bare model state_dict (`torch.save(model.state_dict())`).
    Loaded with weights_only: a checkpoint holds tensors and numbers, nothing to execute."""
    torch = _torch()
    path = pathlib.Path(path)
    expected = f"the course template's checkpoint (a dict with {', '.join(TEMPLATE_KEYS)}) or a model state_dict"
    if not path.is_file():
        raise CheckpointFileError(f"{path} not found: expected {expected}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a file that is not its format
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise CheckpointFileError(f"{path} is not a PyTorch checkpoint (torch.load: {type(e).__name__}: {first}); "
                                  f"expected {expected}") from None
    is_tensors = lambda d: isinstance(d, Mapping) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())
    if isinstance(obj, Mapping) and "state_dict" in obj:
        state_dict, extras = obj["state_dict"], {k: v for k, v in obj.items() if k != "state_dict"}
    elif is_tensors(obj):
        state_dict, extras = obj, {}
    else:
        what = f"a dict with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise CheckpointFileError(f"{path} holds {what}; expected {expected}")
    if not is_tensors(state_dict):
        raise CheckpointFileError(f"{path}: its 'state_dict' is not a dict of tensors; expected the course "
                                  "model's state_dict")
    last_epoch = extras.get("last_epoch", 0)
    if isinstance(last_epoch, bool) or not isinstance(last_epoch, int) or last_epoch < 0:
        raise CheckpointFileError(f"{path}: 'last_epoch' is {last_epoch!r}; expected an epoch number >= 0")
    arrays = {}
    for name, t in state_dict.items():
        if name.endswith("." + torch_layout.NUM_BATCHES):
            continue
        if not t.is_floating_point():
            raise CheckpointFileError(f"{path}: '{name}' holds {t.dtype} values; expected floating-point weights")
        arrays[str(name)] = t.detach().to("cpu", torch.float32).numpy()
    return arrays, extras


def template_dims(arrays: Mapping[str, np.ndarray], path, given: Mapping[str, Any]) -> dict[str, int]:
    """F_dim, L_dim, N_dim, D_out_dim read from the tensor shapes; a dim flag given must agree."""
    dims = {}
    for flag, (jax_path, divisor) in torch_layout.DIM_SOURCES.items():
        name = torch_layout.torch_name(jax_path)
        if name not in arrays or arrays[name].ndim != 4:
            raise CheckpointFileError(f"{path}: its state_dict has no 4-D '{name}'; expected the course "
                                      "model's (VAE_Model: frame_transformation, label_transformation, "
                                      "Gaussian_Predictor, Decoder_Fusion, Generator)")
        dims[flag] = arrays[name].shape[0] // divisor
        if given.get(flag) is not None and given[flag] != dims[flag]:
            raise ConfigError(f"--{flag} {given[flag]} does not match {path}: its '{name}' is "
                              f"{_shape_text(arrays[name].shape)}, i.e. {flag} {dims[flag]} (leave --{flag} out: "
                              "the dims are read from the checkpoint)")
    return dims


def check_entries(arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple], path, dims) -> None:
    """Every entry of the course model at `dims` present with its shape, and no other."""
    expected = {k: v for k, v in expected.items() if not k.endswith("." + torch_layout.NUM_BATCHES)}
    ours, theirs = torch_layout.widths(expected), tuple(arrays[n].shape[0] if n in arrays else None
                                                        for n in map(torch_layout.torch_name, torch_layout.WIDTH_SOURCES))
    if None not in theirs and ours != theirs:
        raise CheckpointFileError(f"{path}: its encoder widths are {theirs} (the template's at F_dim {dims['F_dim']}, "
                                  f"L_dim {dims['L_dim']}); cvae-jax's Lab4 model fixes them at {ours} (the "
                                  f"template's at {REFERENCE_WIDTHS_AT}), so only checkpoints trained at those dims "
                                  "convert")
    at = f"the course model at {_dims_text(dims)}"
    missing = [n for n in expected if n not in arrays]
    if missing:
        raise CheckpointFileError(f"{path}: its state_dict lacks {len(missing)} entries of {at}, e.g. "
                                  f"{missing[:3]}")
    unknown = [n for n in arrays if n not in expected]
    if unknown:
        raise CheckpointFileError(f"{path}: its state_dict has {len(unknown)} entries {at} does not, e.g. "
                                  f"{unknown[:3]}")
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise CheckpointFileError(f"{path}: '{name}' is {_shape_text(arrays[name].shape)}, {at} has "
                                      f"{_shape_text(shape)}")


def from_torch(ckpt, out, flags: Mapping[str, Any] | None = None, log=print) -> pathlib.Path:
    """A run folder at `out` from a course checkpoint; `flags` are config flags (train.py's)."""
    from cvae_jax.train_step import TrainState, make_optimizer
    from cvae_jax.training import Progress

    flags = dict(flags or {})
    out = pathlib.Path(out)
    placed = [f for f in ("save_root", "run_name") if f in flags]
    if placed:
        raise ConfigError(f"--{placed[0]} cannot be given to from-torch: --out names the run folder")
    _torch()
    _check_new(out, "--out", RunFolderError)
    arrays, extras = read_template_checkpoint(ckpt)
    dims = template_dims(arrays, ckpt, flags)
    try:
        preset("lab4").replace(**dims).validated()
    except ConfigError as e:
        raise CheckpointFileError(f"{ckpt} holds a model at {_dims_text(dims)}, which cvae-jax cannot build: {e}") from None
    cfg = preset("lab4").replace(**{**flags, **dims}, save_root=str(out.parent), run_name=out.name).validated()
    _, like = checkpointing.abstract_state(cfg)
    check_entries(arrays, torch_layout.expected_shapes(like.params, like.batch_stats), ckpt, dims)
    params, batch_stats = like.params, like.batch_stats
    for tree in (params, batch_stats):
        nnx.replace_by_pure_dict(tree, jax.tree.map(jnp.asarray, torch_layout.from_torch(arrays, tree)))
    # Adam's state starts afresh (the template keeps none); jitted: one compile, not one per leaf
    state = TrainState(params, batch_stats, jax.jit(make_optimizer(cfg).init)(params), jnp.zeros((), jnp.int32))
    epoch = extras["last_epoch"] + 1 if "last_epoch" in extras else 0
    meta = Progress(epoch=epoch, schedule_epochs=cfg.num_epoch).to_json(jax.random.key(cfg.seed), cfg)
    meta["converted_from"] = str(pathlib.Path(ckpt).resolve())
    _write_new(out, lambda tmp: checkpointing.write_run(tmp, cfg, state, meta), "--out", RunFolderError)
    log(f"wrote {out}: a --preset lab4 run folder at {_dims_text(dims)} from {ckpt} (epoch {epoch}, "
        f"a fresh Adam state); evaluate it with evaluate.py --run {out}")
    return out


# --------------------------------------------------------------------------- command line


def parser(prog: str = "cvae-jax-convert") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Convert Lab4 models between cvae-jax run folders and "
                                "the course template's PyTorch checkpoints (needs the torch extra).")
    sub = p.add_subparsers(dest="command", required=True, metavar="{to-torch,from-torch}")
    to = sub.add_parser("to-torch", help="a run folder -> the course template's checkpoint (Tester.py loads it)",
                        description="Write a Lab4 run's checkpoint as the course template's save() does.")
    to.add_argument("run", metavar="RUN", help="run folder made by train.py (or by from-torch)")
    to.add_argument("out", metavar="OUT.ckpt", help="checkpoint file to write (must not exist)")
    to.add_argument("--which", choices=("best", "latest"), default="best", help="checkpoint of the run to "
                    "convert (default: best, the latest when no validation ran)")
    to.add_argument("--allow_sigmoid", action="store_true", help="convert an --output_sigmoid run (the "
                    "template must then apply the sigmoid itself)")
    fr = sub.add_parser("from-torch", help="a course template checkpoint -> a run folder (evaluate.py --run)",
                        description="Make a run folder from a course template checkpoint. The dims are read "
                        "from the tensor shapes; the config is the lab4 preset with them and any config flag "
                        "given below (as train.py takes them, e.g. --DR, --bn_mode batch).")
    fr.add_argument("ckpt", metavar="CKPT", help="checkpoint written by the course template's save(), or a "
                    "model state_dict")
    fr.add_argument("--out", required=True, metavar="RUN", help="run folder to make (must not exist)")
    add_config_flags(fr, "lab4", "lab4")
    return p


def main(argv=None, prog: str = "cvae-jax-convert") -> None:
    """The command; returns nothing, so a console script's sys.exit(main()) exits 0."""
    p = parser(prog)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    with input_errors_as_usage(prog):
        if args.command == "to-torch":
            to_torch(args.run, args.out, args.which, args.allow_sigmoid)
        else:
            from_torch(args.ckpt, args.out, given_flags(args))


if __name__ == "__main__":
    main(prog="python -m cvae_jax.convert")
