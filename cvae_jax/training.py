"""The training loop: data, schedules, the jitted step, validation, checkpoints, plots.

Resume order: a run folder given with `resume=` continues from its latest checkpoint with
its saved config (only `num_epoch` may grow); otherwise a fresh run folder starts. Every
random draw is keyed by (seed, epoch, global step), and batches by (seed, epoch), so a
resumed run continues bit for bit where the interrupted one stopped.

With several processes (`jax.distributed`, see `cvae_jax.distributed`) every process runs
this same loop on the same batches; each feeds its rows of the global batch to its own
devices. Process 0 alone writes config, metrics, plots and GIFs and logs; checkpoints are
saved and restored by all processes together.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from cvae_jax import checkpointing, distributed, media, metrics, models, plots, schedules
from cvae_jax.config import Config, check_resume_changes
from cvae_jax.errors import ConfigError, RunExistsError
from cvae_jax.train_step import Schedule, init_state, make_predict, make_train_step


@dataclasses.dataclass
class Progress:
    """Host-side loop state saved in every checkpoint's `meta`."""
    epoch: int = 0            # epoch in progress
    step_in_epoch: int = 0    # batches of that epoch already applied
    adaptive_tfr: dict | None = None

    def to_json(self, base_key, cfg: Config) -> dict:
        """The checkpoint's `meta` item: this state, the base key, and the resolved config
        (so a single checkpoint folder is self-describing)."""
        return dict(dataclasses.asdict(self), key=checkpointing.key_to_json(base_key),
                    config=cfg.to_json())

    @classmethod
    def from_json(cls, meta: dict) -> "Progress":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in names})


def data_mesh():
    """A 1-D mesh over every device of every process: batches split on 'data', state
    replicated.

    Auto axes let the compiler place the collectives (BatchNorm and loss means over the
    batch, the gradient all-reduce) so model code stays free of sharding annotations.
    """
    return jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))


def _keys(base_key, epoch: int, global_step: int):
    epoch_key = jax.random.fold_in(jax.random.fold_in(base_key, 1), epoch)
    step_key = jax.random.fold_in(jax.random.fold_in(base_key, 2), global_step)
    return epoch_key, step_key


def total_steps(cfg: Config, data) -> int:
    return sum(data.steps_in_epoch(e) for e in range(cfg.num_epoch))


def schedule_at(cfg: Config, epoch: int, global_step: int, n_total: int, progress: Progress) -> Schedule:
    lr = schedules.learning_rate(cfg.lr_schedule, cfg.lr, epoch, global_step, n_total,
                                 cfg.lr_milestones, cfg.lr_gamma)
    per_step = cfg.kl_anneal_per == "step"
    beta = cfg.beta * schedules.kl_beta(cfg.kl_anneal_type, global_step if per_step else epoch,
                             n_total if per_step else cfg.num_epoch, cfg.kl_anneal_cycle,
                             cfg.kl_anneal_ratio)
    if cfg.tfr_adaptive:
        tfr = schedules.AdaptiveTFR.from_dict(progress.adaptive_tfr).ratio
    else:
        tfr = schedules.teacher_forcing_ratio(epoch, cfg.tfr, cfg.tfr_sde, cfg.tfr_d_step, cfg.tfr_floor)
    return Schedule(*(jnp.float32(v) for v in (lr, beta, tfr)))


def validate(predict, state, data, base_key, sharding=None):
    """Per-(sequence, frame) PSNR of prior rollouts of every validation sequence, scored on
    the predicted frames only; returns (psnr, predictions), the same in every process.
    `sharding` places the inputs (replicated: validation batches are a single video)."""
    preds, truths = [], []
    for i, (inputs, truth) in enumerate(data.val_batches()):
        key = jax.random.fold_in(jax.random.fold_in(base_key, 3), i)
        if sharding is not None:
            inputs = distributed.global_array(inputs, sharding)
        pred = distributed.to_host(predict(state.params, state.batch_stats, inputs, key))
        preds.append(pred[:len(truth)])
        truths.append(truth)
    preds = np.concatenate(preds)
    return np.asarray(metrics.psnr(preds, np.concatenate(truths))), preds


def new_run_dir(cfg: Config) -> pathlib.Path:
    """save_root/run_name, or save_root/<model>_<preset>_<start time> (process 0's time in
    every process of a multi-process run)."""
    if cfg.run_name:
        return pathlib.Path(cfg.save_root) / cfg.run_name
    now = datetime.datetime.now()
    day, time_of_day = distributed.from_main([int(f"{now:%Y%m%d}"), int(f"{now:%H%M%S}")])
    return pathlib.Path(cfg.save_root) / f"{cfg.model}_{cfg.preset}_{day:08d}-{time_of_day:06d}"


def train_and_evaluate(cfg: Config | None = None, resume: str | None = None,
                       num_epoch: int | None = None, log=print, **resume_changes) -> pathlib.Path:
    """Train (or resume) a run; returns the run folder.

    A resume uses the run's saved config; `num_epoch` and `resume_changes` may change only
    the flags marked `resume` (`config.RESUME_FLAGS`). A resume that raises `num_epoch`
    continues exactly only for schedules that do not depend on the run length: cosine LR
    and per-step KL annealing are stretched to the new total from the resumed step on.

    In a multi-process run every process calls this with the same arguments; only
    process 0 writes files and calls `log`.
    """
    t_start = time.perf_counter()
    main = distributed.is_main()
    log = log if main else _silent
    if resume:
        run_dir = pathlib.Path(resume)
        cfg = checkpointing.load_config(run_dir)
        if num_epoch is not None:
            resume_changes["num_epoch"] = num_epoch
        check_resume_changes(resume_changes, run_dir)
        cfg = cfg.replace(**resume_changes).validated()
    else:
        cfg = cfg.validated()
        run_dir = new_run_dir(cfg)
        ckpts = run_dir / "checkpoints"
        if ckpts.is_dir() and any(ckpts.iterdir()):
            raise RunExistsError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it "
                                 "or choose another --run_name")
    records = _read_records(run_dir)
    mesh = data_mesh()
    if cfg.batch_size % mesh.size:
        where = f" of the {jax.process_count()} processes" if jax.process_count() > 1 else ""
        raise ConfigError(f"--batch_size {cfg.batch_size} must be divisible by the {mesh.size} devices{where}")
    data = models.family(cfg.model).load_data(cfg, log=log)  # a bad dataset stops the run before it has a folder
    distributed.sync("cvae_jax: run folder read")  # before process 0 writes into it
    if main:
        checkpointing.save_config(run_dir, cfg)
    batch_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())

    n_total = total_steps(cfg, data)
    base_key = jax.random.key(cfg.seed)
    graphdef, state = init_state(cfg, jax.random.fold_in(base_key, 0))
    last_mgr, best_mgr = checkpointing.managers(run_dir, cfg.keep_last)
    progress = Progress(adaptive_tfr=schedules.AdaptiveTFR(cfg.tfr).to_dict() if cfg.tfr_adaptive else None)
    state = distributed.global_array(state, replicated)
    if resume:
        state, meta = checkpointing.restore(last_mgr, state)
        base_key = checkpointing.key_from_json(meta["key"])
        progress = Progress.from_json(meta)
        records = [r for r in records if r["epoch"] < progress.epoch]
        log(f"resuming {run_dir} at epoch {progress.epoch}, step {progress.step_in_epoch} of it")
    if main:
        _write_records(run_dir, records)

    train_step = make_train_step(graphdef, cfg)
    predict = make_predict(graphdef, cfg)
    baseline = data.baseline_psnr()
    global_step = int(state.step)
    epoch_start_step = global_step - progress.step_in_epoch

    try:
        for epoch in range(progress.epoch, cfg.num_epoch):
            n_steps = data.steps_in_epoch(epoch)
            epoch_start_step = global_step - progress.step_in_epoch
            sched = schedule_at(cfg, epoch, global_step, n_total, progress)
            batches = data.epoch_batches(epoch)
            sums, n_done, bar = {}, 0, tqdm(total=n_steps, initial=progress.step_in_epoch, desc=f"epoch {epoch}",
                                 dynamic_ncols=True, leave=False, disable=not main)
            for i, batch in enumerate(batches):
                if i >= n_steps:
                    break
                if i < progress.step_in_epoch:
                    continue  # applied before the interruption
                sched = schedule_at(cfg, epoch, global_step, n_total, progress)
                epoch_key, step_key = _keys(base_key, epoch, global_step)
                state, m = train_step(state, distributed.global_array(batch, batch_sharding), sched,
                                      epoch_key, step_key)
                m = {k: float(v) for k, v in distributed.to_host(m).items()}
                if not np.isfinite(m["loss"]):
                    saved = (f"the last checkpoint in {run_dir / 'checkpoints'} is intact"
                             if last_mgr.latest_step() is not None else
                             f"no checkpoint was saved yet in {run_dir / 'checkpoints'}")
                    raise FloatingPointError(f"non-finite loss {m['loss']} at epoch {epoch}, step "
                                             f"{global_step}; {saved} (lower --lr?)")
                global_step += 1
                progress.step_in_epoch = i + 1
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_done += 1
                bar.set_postfix(loss=f"{m['loss']:.4f}", mse=f"{m['mse']:.4f}", kl=f"{m['kl']:.1f}",
                                beta=f"{float(sched.beta):.3f}", tfr=f"{float(sched.tfr):.2f}", refresh=False)
                bar.update(1)
                if distributed.preemption_requested(global_step):
                    raise distributed.Preempted(f"stopped on SIGTERM at epoch {epoch}, step {i + 1} of it; "
                                                f"continue with --resume {run_dir}")
            bar.close()
            record = {"epoch": epoch, **{k: v / max(n_done, 1) for k, v in sums.items()},
                      "beta": float(sched.beta), "tfr": float(sched.tfr), "lr": float(sched.lr),
                      "steps": global_step, "seconds": round(time.perf_counter() - t_start, 1)}
            if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.num_epoch:
                psnr, preds = validate(predict, state, data, base_key, replicated)
                record["val_psnr"] = float(np.nanmean(psnr))
                _after_validation(cfg, progress, record["val_psnr"])
                if main:
                    _write_run_figures(run_dir, records + [record], psnr, preds, data, baseline)
            progress.epoch, progress.step_in_epoch = epoch + 1, 0
            epoch_start_step = global_step
            records.append(record)
            if main:
                _write_records(run_dir, records)
            log(_epoch_line(record, float(np.mean(baseline)), data.baseline_name))
            if (epoch + 1) % cfg.per_save == 0 or epoch + 1 == cfg.num_epoch:
                meta = progress.to_json(base_key, cfg)
                checkpointing.save(last_mgr, global_step, state, meta)
                if record.get("val_psnr") is not None:
                    checkpointing.save(best_mgr, global_step, state, meta, {"val_psnr": record["val_psnr"]})
    except distributed.Preempted as stop:  # every process is here, after the same step
        _save_interrupted(last_mgr, state, progress, epoch_start_step, base_key, cfg, run_dir, log)
        log(str(stop))
        raise
    except KeyboardInterrupt:
        if jax.process_count() > 1:  # a save needs every process, each at the same step
            log(f"interrupted: the last checkpoint in {run_dir / 'checkpoints'} stands (SIGTERM to "
                "any process stops all of them with a checkpoint)")
            raise
        _save_interrupted(last_mgr, state, progress, epoch_start_step, base_key, cfg, run_dir, log)
        raise
    last_mgr.wait_until_finished()
    best_mgr.wait_until_finished()
    log(_summary(run_dir, records, baseline, data.baseline_name, time.perf_counter() - t_start))
    return run_dir


def _silent(line: str) -> None:
    """`log` in processes other than 0."""


def _save_interrupted(manager, state, progress, epoch_start_step, base_key, cfg, run_dir, log) -> None:
    """Checkpoint mid-epoch on Ctrl-C; the position comes from the state's own step
    counter, so it is right whether or not the interrupt hit between step and bookkeeping."""
    try:
        step = int(state.step)
    except RuntimeError:  # the interrupt landed while the donated state was in flight
        log(f"interrupted mid-step: the last checkpoint in {run_dir / 'checkpoints'} stands")
        return
    progress.step_in_epoch = step - epoch_start_step
    log(f"interrupted: saving epoch {progress.epoch} step {progress.step_in_epoch} to {run_dir}")
    if step not in manager.all_steps():
        checkpointing.save(manager, step, state, progress.to_json(base_key, cfg))
    manager.wait_until_finished()


def _after_validation(cfg: Config, progress: Progress, val_psnr: float) -> None:
    if cfg.tfr_adaptive:
        state = schedules.AdaptiveTFR.from_dict(progress.adaptive_tfr)
        progress.adaptive_tfr = schedules.adaptive_tfr_update(state, val_psnr, cfg.tfr_d_step,
                                                              cfg.tfr_floor).to_dict()


def _write_run_figures(run_dir, records, psnr, preds, data, baseline) -> None:
    plots.plot_training(records, run_dir / "training.png")
    plots.plot_psnr_per_frame(psnr, run_dir / "val_psnr_per_frame.png",
                              "validation PSNR per frame (z from the prior)", baseline=baseline,
                              first_frame_index=data.first_scored_frame)
    media.write_psnr_csv(run_dir / "val_psnr_per_frame.csv", psnr, first_frame_index=data.first_scored_frame)
    media.write_gif(media.side_by_side(*data.gif_panels(0, preds[0])), run_dir / "val_video0.gif")


def _epoch_line(r: dict, baseline: float, baseline_name: str) -> str:
    line = (f"epoch {r['epoch']}: loss {r.get('loss', float('nan')):.4f} mse {r.get('mse', float('nan')):.5f} "
            f"kl {r.get('kl', float('nan')):.2f} beta {r['beta']:.3f} tfr {r['tfr']:.2f} lr {r['lr']:.2e} "
            f"[{r['seconds']:.0f}s]")
    if r.get("val_psnr") is not None:
        line += f" | val PSNR {r['val_psnr']:.2f} dB ({baseline_name} {baseline:.2f} dB)"
    return line


def _summary(run_dir, records, baseline, baseline_name, seconds) -> str:
    val = [r["val_psnr"] for r in records if r.get("val_psnr") is not None]
    lines = [f"run folder: {run_dir}",
             f"  checkpoints: {run_dir / 'checkpoints'} (last), {run_dir / 'best'} (best val PSNR)",
             f"  metrics: {run_dir / 'metrics.jsonl'}; config: {run_dir / checkpointing.CONFIG_FILE}"]
    if val:
        lines += [f"  plots: {run_dir / 'training.png'}, {run_dir / 'val_psnr_per_frame.png'}; "
                  f"GIF: {run_dir / 'val_video0.gif'}",
                  f"final validation PSNR {val[-1]:.2f} dB vs {baseline_name} baseline "
                  f"{float(np.mean(baseline)):.2f} dB ({val[-1] - float(np.mean(baseline)):+.2f} dB)"]
    lines.append(f"total time {seconds:.0f} s")
    return "\n".join(lines)


def _read_records(run_dir: pathlib.Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_records(run_dir: pathlib.Path, records: list[dict]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    (run_dir / "metrics.jsonl").write_text(text)
