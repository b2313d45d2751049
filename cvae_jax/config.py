"""Typed, frozen run configuration: nested sections, each validating itself, and presets.

A `Config` holds the model's name, the preset it started from, five common sections
(`dataset`, `optim`, `schedule`, `run`, `execution`) and one model section (`Lab4Config`
or `SVGConfig`, as `arch`). Every field is a flag of the same name (the reference
trainers' names: `--tfr`, `--kl_anneal_type`, `--n_past`, ...), and its help text lives
on the field. Flag names are unique across sections, so `cfg.tfr` reads a field wherever
it lives and `cfg.replace(tfr=0.5)` routes it; naming a field of the other model's
section is an error (`--vgg_width applies to --model svg, not lab4`).

The resolved config is saved beside every checkpoint (`to_json`, version 2) and is all
`load_checkpoint` needs to rebuild the model; version-1 files (flat, no version) load too.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from cvae_jax.data.dance_folder import AUGMENTS
from cvae_jax.errors import ConfigError
from cvae_jax.kernels import CONV_IMPLS
from cvae_jax.schedules import KL_ANNEAL_TYPES, LR_SCHEDULES, OPTIMIZERS

CONFIG_VERSION = 2


def option(default, help: str, *, choices=None, positive=False, unit=None, optional_positive=False,
           aliases=(), flag=None, resume=False):
    """A config field: its default and one line of help; the rules `Section.validated`
    applies to it (choices, positive, a closed or half-open unit interval); other flag
    names (`aliases`, the reference trainers' spellings); whether it may change on
    `--resume` (it changes how, not what, a run computes)."""
    meta = dict(help=help, choices=choices, positive=positive, unit=unit,
                optional_positive=optional_positive, aliases=tuple(aliases), flag=flag, resume=resume)
    return dataclasses.field(default=default, metadata=meta)


def shown(value) -> str:
    """A flag's value as a command line or a legend spells it (unset, space-separated tuples)."""
    if value is None:
        return "unset"
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or f.name


@dataclasses.dataclass(frozen=True)
class Section:
    """A frozen group of flags that checks its own values."""

    title: typing.ClassVar[str] = ""

    @classmethod
    def options(cls) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(cls)

    def validated(self):
        """Fail early, naming the flag, instead of deep inside a jitted function."""
        for f in self.options():
            value, m, name = getattr(self, f.name), f.metadata, f"--{flag_name(f)}"
            if m["choices"] is not None and value not in m["choices"]:
                raise ConfigError(f"{name} must be one of {list(m['choices'])}, got {value!r}")
            if (m["positive"] or (m["optional_positive"] and value is not None)) and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
            if m["unit"] == "[0, 1]" and not 0 <= value <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
            if m["unit"] == "(0, 1]" and not 0 < value <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {value}")
        self.check()
        return self

    def check(self) -> None:
        """Rules between a section's own fields."""


@dataclasses.dataclass(frozen=True)
class DatasetConfig(Section):
    title: typing.ClassVar[str] = "data"
    source: str | None = option(None, "synthetic (built in), folder (--DR) or tfds (svg, --data_dir); "
                                "unset: folder when --DR is given, else the model's synthetic set",
                                choices=("synthetic", "folder", "tfds", None), flag="data")
    DR: str | None = option(None, "dataset root in the reference layout (Lab4 dance folders, or the "
                            "processed BAIR folders for svg)", aliases=("data_root",))
    cache_dir: str | None = option(None, "cache of decoded frames and generated synthetic data "
                                   "(unset: $CVAE_JAX_CACHE or ~/.cache/cvae_jax)")
    synthetic_seed: int = option(0, "seed of the built-in synthetic dataset")

    def check(self) -> None:
        if self.source == "folder" and self.DR is None:
            raise ConfigError("--data folder needs --DR <dataset root>")
        if self.source == "tfds" and self.DR is not None:
            raise ConfigError("--DR is a folder root; with --data tfds use --data_dir")


@dataclasses.dataclass(frozen=True)
class OptimConfig(Section):
    title: typing.ClassVar[str] = "optimisation"
    batch_size: int = option(2, "clips per training step (all devices together)", positive=True)
    lr: float = option(0.001, "learning rate", positive=True)
    lr_schedule: str = option("multistep", "learning-rate schedule", choices=LR_SCHEDULES)
    lr_milestones: tuple[int, ...] = option((2, 5), "multistep: epochs at which the rate is "
                                            "multiplied by --lr_gamma")
    lr_gamma: float = option(0.1, "multistep: factor at each milestone")
    optimizer: str = option("Adam", "optimizer: Adam (reference) or AdamW (decoupled weight decay)",
                            choices=OPTIMIZERS, flag="optim")
    weight_decay: float | None = option(None, "AdamW's decoupled weight decay (unset: 0.01, PyTorch's "
                                        "default); refused with Adam")
    beta1: float = option(0.9, "Adam beta1")
    grad_clip: float = option(1.0, "clip gradients to this global norm (0: off)")
    num_epoch: int = option(70, "epochs to train", positive=True, aliases=("niter",), resume=True)
    steps_per_epoch: int | None = option(None, "cap on batches per epoch (unset: one pass over the clips)",
                                         optional_positive=True, aliases=("epoch_size",))

    def check(self) -> None:
        if self.grad_clip < 0 or not 0 <= self.beta1 < 1:
            raise ConfigError(f"--grad_clip must be >= 0 and --beta1 in [0, 1), got {self.grad_clip}, {self.beta1}")
        if self.weight_decay is not None and (self.optimizer != "AdamW" or self.weight_decay < 0):
            raise ConfigError(f"--weight_decay needs --optim AdamW and a value >= 0, got --optim {self.optimizer}, "
                              f"--weight_decay {self.weight_decay}")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(Section):
    title: typing.ClassVar[str] = "schedules"
    kl_anneal_type: str = option("Cyclical", f"KL weight schedule: {', '.join(KL_ANNEAL_TYPES)} "
                                 "(any case)")
    kl_anneal_cycle: int = option(10, "annealing cycles over the run's epochs (or steps, per "
                                  "--kl_anneal_per), as the reference's n_cycle",
                                  positive=True)
    kl_anneal_ratio: float = option(1.0, "share of each cycle spent ramping up", unit="(0, 1]")
    kl_anneal_start: float = option(0.0, "KL weight at the start of each ramp, as a share of --beta "
                                    "(0: reference)", unit="[0, 1]")
    kl_anneal_per: str = option("epoch", "anneal beta per epoch or per step", choices=("epoch", "step"))
    beta: float = option(1.0, "KL weight that annealing ramps to (the constant weight with None)")
    tfr: float = option(1.0, "initial teacher-forcing ratio", unit="[0, 1]")
    tfr_sde: int = option(10, "epoch at which the ratio starts to decay", aliases=("tfr_start_decay_epoch",))
    tfr_d_step: float = option(0.1, "teacher-forcing decay per epoch", aliases=("tfr_decay_step",))
    tfr_floor: float = option(0.0, "lowest teacher-forcing ratio", unit="[0, 1]", aliases=("tfr_lower_bound",))
    tf_mode: str = option("epoch", "teacher-forcing draw: once per epoch (reference), per batch, clip, "
                          "frame, or blend", choices=("epoch", "batch", "clip", "frame", "blend"))
    tfr_adaptive: bool = option(False, "lower the ratio by --tfr_d_step whenever validation PSNR improves")

    def check(self) -> None:
        # the reference spells the annealing types in any case
        if self.kl_anneal_type.lower() not in [k.lower() for k in KL_ANNEAL_TYPES]:
            raise ConfigError(f"--kl_anneal_type must be one of {list(KL_ANNEAL_TYPES)}, got {self.kl_anneal_type!r}")
        if self.beta < 0:
            raise ConfigError(f"--beta must be >= 0, got {self.beta}")


@dataclasses.dataclass(frozen=True)
class RunConfig(Section):
    title: typing.ClassVar[str] = "run"
    seed: int = option(1, "seed of initialisation, batches and every random draw")
    save_root: str = option("runs", "folder that holds run folders")
    run_name: str | None = option(None, "run folder name (unset: <model>_<preset>_<start time>)")
    per_save: int = option(1, "checkpoint every N epochs", positive=True)
    keep_last: int = option(3, "checkpoints kept besides the best", positive=True)
    val_every: int = option(1, "validate every N epochs (and after the last)", positive=True)
    log_every: int = option(10, "append a line of the last N steps' mean metrics to steps.jsonl and "
                            "TensorBoard every N training steps", positive=True, resume=True)
    z_mode: str = option("sample", "z at generation: sampled from the prior, or its mean",
                         choices=("sample", "mean"))


@dataclasses.dataclass(frozen=True)
class ExecutionConfig(Section):
    title: typing.ClassVar[str] = "execution"
    scan_unroll: int = option(16, "training rollout steps per loop iteration (XLA CPU is faster unrolled)",
                              positive=True, resume=True)
    remat: bool = option(False, "rematerialise each scanned step in the backward pass (less memory)",
                         resume=True)
    tf_fast_path: bool = option(True, "also compile the all-teacher-forced program (faster teacher-forced "
                                "steps; twice the compile time)", resume=True)
    precision: str = option("fp32", "bf16: bfloat16 compute, float32 parameters, optimizer and loss",
                            choices=("fp32", "bf16"))
    conv_impl: str = option("auto", "convolutions: custom (cvae_jax/kernels.py, fast on XLA CPU), xla, "
                            "or auto (custom on CPU only)", choices=CONV_IMPLS, resume=True)


@dataclasses.dataclass(frozen=True)
class Lab4Config(Section):
    """the pose-conditioned CVAE of the Lab4 course (dance video from a first frame and poses); reference dims 128/32/12/192."""
    title: typing.ClassVar[str] = "Lab4 model"
    F_dim: int = option(128, "frame feature channels", positive=True)
    L_dim: int = option(32, "pose feature channels", positive=True)
    N_dim: int = option(12, "noise (z) channels, a multiple of 4", positive=True)
    D_out_dim: int = option(192, "decoder fusion channels, a multiple of 16", positive=True)
    output_sigmoid: bool = option(False, "squash generator output into [0, 1] (off: reference)")
    bn_mode: str = option("running", "pose BatchNorm at generation: running averages, or per-step batch "
                          "statistics (reference)", choices=("running", "batch"))
    smooth_weight: float = option(0.0, "weight of a temporal-difference MSE term (0: reference)")
    copy_scene: bool = option(False, "extension: each generated frame is the given first frame (the static "
                              "scene) except where the dancer stands in the first or the current pose, "
                              "their skeletons widened by a quarter of the frame height; no parameters "
                              "(off: reference)")
    scene_fill: bool = option(False, "extension, with --copy_scene: the first frame's dancer is filled in "
                              "from the studio around it (harmonic fill, no parameters), so the copied scene "
                              "covers everything but the current dancer's area (off: reference)")
    scene_alpha: bool = option(False, "extension, with --copy_scene: inside the current dancer's area the "
                               "generator also draws an opacity over the copied scene (one more output "
                               "channel; off: reference)")
    augment: str = option("none", "training clips: flip frames and poses left-right together (flip), and "
                          "shift them by up to 1/16 of the frame (flip_shift); none: reference",
                          choices=AUGMENTS)
    batched_wgrad: bool = option(True, "the 1x1 layers' weight gradients as one GEMM over all steps "
                                 "(CPU kernels only; not under --remat)", resume=True)
    frame_H: int = option(32, "frame height the dance frames are resized to", positive=True)
    frame_W: int = option(64, "frame width the dance frames are resized to", positive=True)
    train_vi_len: int = option(16, "frames per training clip")
    val_vi_len: int = option(630, "frames per validation video", positive=True)
    partial: float = option(1.0, "share of the training clips used per epoch", unit="(0, 1]")
    fast_train: bool = option(False, "train on --fast_partial of the clips for the first epochs")
    fast_partial: float = option(0.4, "share of clips with --fast_train", unit="(0, 1]")
    fast_train_epoch: int = option(5, "epochs of --fast_train")
    synthetic_train_videos: int = option(4, "training videos of the built-in synthetic dance")

    def check(self) -> None:
        if self.train_vi_len < 2:
            raise ConfigError(f"--train_vi_len must be at least 2 (a given frame and one to predict), got {self.train_vi_len}")
        if self.N_dim % 4:
            raise ConfigError(f"--N_dim must be a multiple of 4 (the posterior narrows to N/4 and N/2), got {self.N_dim}")
        if (self.F_dim + self.L_dim + self.N_dim) % 4 or self.D_out_dim % 16:
            raise ConfigError("--F_dim + --L_dim + --N_dim must be a multiple of 4 and --D_out_dim of 16 "
                              f"(the fusion and generator halve them), got {self.F_dim}+{self.L_dim}+{self.N_dim}, {self.D_out_dim}")
        for name in ("scene_fill", "scene_alpha"):
            if getattr(self, name) and not self.copy_scene:
                raise ConfigError(f"--{name} refines the scene copy: it needs --copy_scene (or add --no-{name})")

    def extensions(self) -> tuple[str, ...]:
        """The flags on that change what the course model computes (`convert` refuses them)."""
        return tuple(n for n in ("copy_scene", "scene_fill", "scene_alpha") if getattr(self, n))


@dataclasses.dataclass(frozen=True)
class SVGConfig(Section):
    """action-conditioned SVG on BAIR robot pushing (SVG-FP, SVG-LP); reference dims g 128, z 64, rnn 256, VGG width 64."""
    title: typing.ClassVar[str] = "SVG model"
    n_past: int = option(2, "context frames", positive=True)
    n_future: int = option(10, "frames predicted after the context in training and validation", positive=True)
    n_eval: int = option(30, "frames loaded per sequence (at most 30)", positive=True)
    z_dim: int = option(64, "latent size", positive=True)
    g_dim: int = option(128, "encoder output size", positive=True)
    rnn_size: int = option(256, "LSTM width", positive=True)
    vgg_width: int = option(64, "channels of the first VGG stage (64: reference)", positive=True)
    posterior_rnn_layers: int = option(1, "posterior LSTM layers", positive=True)
    predictor_rnn_layers: int = option(2, "frame predictor LSTM layers", positive=True)
    prior_rnn_layers: int = option(1, "learned prior LSTM layers", positive=True)
    prior: str = option("fixed", "fixed N(0, I) prior (SVG-FP, the course) or learned (SVG-LP)",
                        choices=("fixed", "learned"))
    last_frame_skip: bool = option(False, "decoder skips from the previous frame, not the last context frame")
    skip_compat: bool = option(False, "skips from frame n_past-2 as edenton/svg's loops do (its published numbers)")
    data_dir: str | None = option(None, "TFDS data_dir holding a prepared bair_robot_pushing_small (--data tfds)")
    camera: str = option("image_aux1", "BAIR camera read from TFDS", choices=("image_aux1", "image_main"))
    synthetic_sequences: int = option(512, "training sequences of the built-in synthetic pushing set",
                                      positive=True)
    val_sequences: int | None = option(None, "validate on at most this many sequences (unset: all)",
                                       optional_positive=True)

    def check(self) -> None:
        if self.n_past + self.n_future > self.n_eval:
            raise ConfigError(f"--n_past + --n_future ({self.n_past} + {self.n_future}) must not exceed "
                              f"--n_eval ({self.n_eval}), the frames loaded per sequence")
        if self.n_eval > 30:
            raise ConfigError(f"--n_eval must be at most 30 (BAIR sequences have 30 frames), got {self.n_eval}")


COMMON_SECTIONS = {"dataset": DatasetConfig, "optim": OptimConfig, "schedule": ScheduleConfig,
                   "run": RunConfig, "execution": ExecutionConfig}
# The model registry: a model's name, its config section. `cvae_jax.models` takes MODELS from here.
MODEL_SECTIONS: dict[str, type[Section]] = {"lab4": Lab4Config, "svg": SVGConfig}
MODELS = tuple(MODEL_SECTIONS)


def _index(section: type[Section]) -> dict[str, str]:
    return {flag_name(f): f.name for f in section.options()}


_COMMON = {flag: (attr, name) for attr, sec in COMMON_SECTIONS.items() for flag, name in _index(sec).items()}
_MODEL = {model: _index(sec) for model, sec in MODEL_SECTIONS.items()}
FLAGS = tuple(_COMMON) + tuple(dict.fromkeys(f for idx in _MODEL.values() for f in idx))


def model_of_flag(flag: str) -> str | None:
    """The model whose section holds `flag`, or None for a common flag."""
    return next((m for m, idx in _MODEL.items() if flag in idx), None)


def field_of(flag: str) -> dataclasses.Field:
    """The dataclass field behind a flag name."""
    if flag in _COMMON:
        attr, name = _COMMON[flag]
        return {f.name: f for f in COMMON_SECTIONS[attr].options()}[name]
    model = model_of_flag(flag)
    if model is None:
        raise KeyError(flag)
    return {f.name: f for f in MODEL_SECTIONS[model].options()}[_MODEL[model][flag]]


RESUME_FLAGS = tuple(f for f in FLAGS if field_of(f).metadata["resume"])


def check_resume_changes(flags, run_dir) -> None:
    """Refuse, naming the first, flags that may not change when `run_dir` resumes."""
    fixed = [f for f in flags if f not in RESUME_FLAGS]
    if fixed:
        raise ConfigError(f"--{fixed[0]} cannot change on --resume ({run_dir}/config.json fixes it); only "
                          f"{', '.join('--' + f for f in RESUME_FLAGS)} may be given with it (how long and "
                          "how, not what, the run computes)")


def _coerce(flag: str, value):
    return tuple(value) if flag == "lr_milestones" and value is not None else value


@dataclasses.dataclass(frozen=True)
class Config:
    model: str = "lab4"
    preset: str = "cpu"
    dataset: DatasetConfig = DatasetConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    run: RunConfig = RunConfig()
    execution: ExecutionConfig = ExecutionConfig()
    arch: Section = Lab4Config()  # the model's own section: MODEL_SECTIONS[model]

    def __getattr__(self, name: str):
        """`cfg.<flag>`: the field of that name in whichever section holds it."""
        if name.startswith("__"):
            raise AttributeError(name)
        return self._flat_get(name)

    def _flat_get(self, flag: str):
        d = object.__getattribute__(self, "__dict__")
        if flag in _COMMON:
            attr, name = _COMMON[flag]
            return getattr(d[attr], name)
        model = d.get("model")
        if model in _MODEL and flag in _MODEL[model]:
            return getattr(d["arch"], _MODEL[model][flag])
        owner = model_of_flag(flag)
        if owner is not None:
            raise AttributeError(f"--{flag} applies to --model {owner}, not {model}")
        raise AttributeError(f"Config has no field or flag {flag!r}")

    def replace(self, **changes) -> "Config":
        """A copy with flags (flat names, routed to their sections), sections, `model` or
        `preset` changed. A new `model` starts its section from that section's defaults."""
        changes = dict(changes)
        top = {k: changes.pop(k) for k in ("model", "preset") if k in changes}
        # a Section value replaces a section; the --optim flag shares its name with one
        top.update({k: changes.pop(k) for k in list(changes)
                    if (k in COMMON_SECTIONS or k == "arch") and isinstance(changes[k], Section)})
        model = top.get("model", self.model)
        if model not in MODEL_SECTIONS:
            raise ConfigError(f"--model must be one of {list(MODELS)}, got {model!r}")
        if model != self.model and "arch" not in top:
            top["arch"] = MODEL_SECTIONS[model]()
        cfg = dataclasses.replace(self, **top)
        per_section: dict[str, dict] = {}
        for flag, value in changes.items():
            if flag in _COMMON:
                attr, name = _COMMON[flag]
            elif flag in _MODEL[model]:
                attr, name = "arch", _MODEL[model][flag]
            elif model_of_flag(flag) is not None:
                raise ConfigError(f"--{flag} applies to --model {model_of_flag(flag)}, not {model}")
            else:
                raise ConfigError(f"unknown config field {flag!r}; this cvae-jax knows {sorted(FLAGS)}")
            per_section.setdefault(attr, {})[name] = _coerce(flag, value)
        return dataclasses.replace(cfg, **{attr: dataclasses.replace(getattr(cfg, attr), **fields)
                                           for attr, fields in per_section.items()})

    def sections(self) -> dict[str, Section]:
        return {**{attr: getattr(self, attr) for attr in COMMON_SECTIONS}, self.model: self.arch}

    def flat(self) -> dict[str, Any]:
        """{flag: value} of every flag that applies to this config's model."""
        return {flag_name(f): getattr(sec, f.name) for sec in self.sections().values() for f in sec.options()}

    def to_json(self) -> dict[str, Any]:
        return {"version": CONFIG_VERSION, "model": self.model, "preset": self.preset,
                **{name: dataclasses.asdict(sec) for name, sec in self.sections().items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Config":
        """A config from `to_json`'s form, or from a version-1 file (flat, no version),
        whose fields of the other model's section (written but never used) are dropped."""
        data = dict(data)
        version = data.pop("version", 1)
        if not isinstance(version, int) or version > CONFIG_VERSION:
            raise ConfigError(f"config version {version!r} is newer than this cvae-jax reads "
                              f"({CONFIG_VERSION}): upgrade cvae-jax to load it")
        model = data.pop("model", "lab4")
        if model not in MODEL_SECTIONS:
            raise ConfigError(f"config model must be one of {list(MODELS)}, got {model!r}")
        base = cls(model=model, preset=data.pop("preset", "cpu"), arch=MODEL_SECTIONS[model]())
        if version == 1:
            flat = {k: v for k, v in data.items() if model_of_flag(k) in (None, model)}
            return base.replace(**flat).validated()
        sections = {**COMMON_SECTIONS, model: MODEL_SECTIONS[model]}
        unknown = sorted(set(data) - set(sections))
        if unknown:
            raise ConfigError(f"config has unknown sections {unknown}; this cvae-jax knows {sorted(sections)}")
        built = {}
        for name, section in sections.items():
            values = dict(data.get(name, {}))
            known = {f.name for f in section.options()}
            extra = sorted(set(values) - known)
            if extra:
                raise ConfigError(f"config section {name!r} has unknown fields {extra}; this cvae-jax "
                                  f"knows {sorted(known)}")
            if "lr_milestones" in values:
                values["lr_milestones"] = tuple(values["lr_milestones"])
            built["arch" if name == model else name] = section(**values)
        return dataclasses.replace(base, **built).validated()

    def validated(self) -> "Config":
        """Each section checks itself; then the rules between sections."""
        if type(self.arch) is not MODEL_SECTIONS.get(self.model):
            raise ConfigError(f"--model {self.model} needs its own section, got {type(self.arch).__name__}")
        cfg = dataclasses.replace(self, **{attr: getattr(self, attr).validated() for attr in COMMON_SECTIONS},
                                  arch=self.arch.validated())
        if cfg.dataset.source == "tfds" and cfg.model != "svg":
            raise ConfigError("--data tfds is the BAIR robot pushing dataset: use it with --model svg")
        return cfg

    @property
    def data_source(self) -> str:
        return self.dataset.source or ("folder" if self.dataset.DR is not None else "synthetic")


def lab4_preset() -> Config:
    """The reference trainer's defaults (Trainer.py argparse)."""
    return Config(preset="lab4")


def cpu_preset() -> Config:
    """Small enough that the default run trains, validates and plots in minutes on 2 cores.

    Same architecture at smaller widths, sigmoid output for a stable 630-frame rollout and a
    faster teacher-forcing decay. KL beta is held at 1 (`None`): in a run this short, epochs
    at beta < 1 teach the decoder to read the frame out of the posterior's z, which the
    prior cannot supply at generation time (benchmarks/NOTES.md, "cpu preset"). Clips of 8
    frames: more updates for the same frames than 16-frame clips, which a run this short
    needs more than longer free-running horizons; 64 steps per epoch fit the run in about
    11 minutes on 2 cores. It turns on the scene layer, extensions of
    the reference: the static studio is copied from the first frame, its dancer filled in,
    and the generator draws the current dancer over it with an opacity, instead of
    redrawing the studio 630 times, where it fades to grey (benchmarks/NOTES.md, "Lab4 on
    real footage").
    """
    return lab4_preset().replace(
        preset="cpu", F_dim=32, L_dim=16, N_dim=8, D_out_dim=64, output_sigmoid=True, copy_scene=True,
        scene_fill=True, scene_alpha=True, batch_size=2, lr=0.002, lr_schedule="cosine", num_epoch=6,
        steps_per_epoch=64, train_vi_len=8, kl_anneal_type="None", tfr=1.0, tfr_sde=1, tfr_d_step=0.25,
        tfr_floor=0.0, tf_mode="clip", per_save=1, val_every=2)


def course_preset() -> Config:
    """The reference architecture (1,585,620 params) trained the way the best course reports
    train it, for the full course dataset on a GPU: sigmoid output (no parameters), AdamW
    with a cosine learning rate, Cyclical KL annealing whose ramps start at 0.1 of beta,
    teacher forcing decaying from the first epoch to 0 by epoch 5, drawn per clip, and 100
    epochs. No extension of the architecture: what a student hands in is the course model."""
    return lab4_preset().replace(
        preset="course", output_sigmoid=True, optim="AdamW", lr=0.001, lr_schedule="cosine",
        num_epoch=100, kl_anneal_type="Cyclical", kl_anneal_cycle=10, kl_anneal_ratio=0.5,
        kl_anneal_start=0.1, tfr=1.0, tfr_sde=1, tfr_d_step=0.2, tfr_floor=0.0, tf_mode="clip",
        per_save=5, val_every=5)


def bair_preset() -> Config:
    """The course's SVG-FP trainer defaults (train_fixed_prior.py): Adam lr 0.002, batch 12,
    2 -> 10 frames, KL weight annealed monotonically to 1 per iteration (Fu et al.), no
    gradient clipping, teacher forcing drawn per batch."""
    return Config().replace(
        model="svg", preset="bair", batch_size=12, lr=0.002, lr_schedule="constant", beta1=0.9,
        grad_clip=0.0, num_epoch=300, steps_per_epoch=600, kl_anneal_type="Monotonic",
        kl_anneal_per="step", kl_anneal_cycle=3, kl_anneal_ratio=0.5, beta=1.0, tfr=1.0,
        tfr_sde=0, tfr_d_step=0.0, tfr_floor=0.0, tf_mode="batch", val_every=5, per_save=5)


def svg_lp_preset() -> Config:
    """SVG-LP as published for BAIR: learned prior, constant KL weight 1e-4, batch 100."""
    return bair_preset().replace(preset="svg_lp", prior="learned", kl_anneal_type="None",
                                 beta=1e-4, batch_size=100)


def svg_cpu_preset() -> Config:
    """`--model svg` on 2 CPU cores in minutes: the same architecture at an eighth of the
    VGG width (8) and smaller recurrent sizes, trained on the synthetic pushing set.

    Batch 16, not smaller: the encoder's last BatchNorm, the predictor's BatchNorm1d and the
    decoder's first BatchNorm normalise vectors over the batch alone, so at batch 4-8 the
    arm position they carry is swamped by batch noise (benchmarks/NOTES.md, "svg cpu
    preset"). KL weight 1 (posterior = prior, as in the Lab4 CPU preset)."""
    return bair_preset().replace(
        preset="cpu", vgg_width=8, g_dim=64, z_dim=16, rnn_size=128, batch_size=16,
        lr_schedule="cosine", num_epoch=8, steps_per_epoch=50, kl_anneal_type="None", beta=1.0,
        tfr=1.0, tfr_sde=2, tfr_d_step=0.15, tf_mode="clip", val_every=2, per_save=1,
        val_sequences=32)


# What each preset serves: python train.py [--model M] --preset P ...
PRESETS = {"lab4": {"cpu": cpu_preset, "lab4": lab4_preset, "course": course_preset},
           "svg": {"cpu": svg_cpu_preset, "bair": bair_preset, "svg_lp": svg_lp_preset}}
PRESET_NAMES = sorted({name for by_model in PRESETS.values() for name in by_model})


def preset(name: str, model: str | None = None) -> Config:
    """A preset by name; `model` picks between same-named ones (cpu), else lab4's."""
    if model is not None and model not in PRESETS:
        raise ConfigError(f"--model must be one of {list(PRESETS)}, got {model!r}")
    owners = [m for m in PRESETS if name in PRESETS[m]] if model is None else [model]
    if not owners or name not in PRESETS[owners[0]]:
        known = {m: sorted(p) for m, p in PRESETS.items()}
        raise ConfigError(f"--preset {name!r} is not one of {known} (for --model {model or 'any'})")
    return PRESETS[owners[0]][name]()
