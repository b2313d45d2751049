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
import itertools
import os
import pathlib
import queue
import signal
import threading
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from cvae_jax import checkpointing, distributed, media, metrics, models, plots, run_logs, schedules
from cvae_jax.config import RESUME_FLAGS, Config, check_resume_changes
from cvae_jax.errors import ConfigError, RunExistsError
from cvae_jax.train_step import Schedule, init_state, make_predict, make_train_step


@dataclasses.dataclass
class Progress:
    """Host-side loop state saved in every checkpoint's `meta`."""
    epoch: int = 0            # epoch in progress
    step_in_epoch: int = 0    # batches of that epoch already applied
    adaptive_tfr: dict | None = None
    sums: dict = dataclasses.field(default_factory=dict)  # the epoch's metric sums so far
    n_done: int = 0           # steps in those sums
    schedule_epochs: int = 0  # the run length the schedules keep (a resume may train longer)
    schedule_steps: int = 0
    log_sums: dict = dataclasses.field(default_factory=dict)  # metric sums since the last steps.jsonl line
    log_n: int = 0

    def to_json(self, base_key, cfg: Config) -> dict:
        """The checkpoint's `meta` item: this state, the base key, and the resolved config
        (so a single checkpoint folder is self-describing)."""
        return dict(dataclasses.asdict(self), key=checkpointing.key_to_json(base_key),
                    config=cfg.to_json())

    @classmethod
    def from_json(cls, meta: dict, cfg: Config, data) -> "Progress":
        """Checkpoints written before the schedule lengths were kept had the run's own."""
        names = {f.name for f in dataclasses.fields(cls)}
        progress = cls(**{k: v for k, v in meta.items() if k in names})
        saved = Config.from_json(meta["config"]) if "config" in meta else cfg
        progress.schedule_epochs = progress.schedule_epochs or saved.num_epoch
        progress.schedule_steps = progress.schedule_steps or total_steps(saved, data)
        return progress


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


def schedule_at(cfg: Config, epoch: int, global_step: int, progress: Progress) -> Schedule:
    """The step's schedule values as host float32 scalars (traced as float32 inputs, and
    logged without reading a device); run-length schedules use the length the run started with."""
    lr = schedules.learning_rate(cfg.lr_schedule, cfg.lr, epoch, global_step, progress.schedule_steps,
                                 cfg.lr_milestones, cfg.lr_gamma)
    per_step = cfg.kl_anneal_per == "step"
    beta = cfg.beta * schedules.kl_beta(cfg.kl_anneal_type, global_step if per_step else epoch,
                                        progress.schedule_steps if per_step else progress.schedule_epochs,
                                        cfg.kl_anneal_cycle, cfg.kl_anneal_ratio, cfg.kl_anneal_start)
    if cfg.tfr_adaptive:
        tfr = schedules.AdaptiveTFR.from_dict(progress.adaptive_tfr).ratio
    else:
        tfr = schedules.teacher_forcing_ratio(epoch, cfg.tfr, cfg.tfr_sde, cfg.tfr_d_step, cfg.tfr_floor)
    return Schedule(*(np.float32(v) for v in (lr, beta, tfr)))


def validate(predict, state, data, base_key, sharding=None):
    """Per-(sequence, frame) PSNR of prior rollouts of every validation sequence, scored on
    the predicted frames only; returns (psnr, scores, predictions), the same in every
    process. `scores`: mean PSNR, mean SSIM (None where frames are smaller than its window)
    and the model's course score (`TrainingData.course_score`, None where it has none).
    `sharding` places the inputs (replicated: validation batches are a single video)."""
    preds, truths = [], []
    for i, (inputs, truth) in enumerate(data.val_batches()):
        key = jax.random.fold_in(jax.random.fold_in(base_key, 3), i)
        if sharding is not None:
            inputs = distributed.global_array(inputs, sharding)
        pred = distributed.to_host(predict(state.params, state.batch_stats, inputs, key))
        preds.append(pred[:len(truth)])
        truths.append(truth)
    preds, truths = np.concatenate(preds), np.concatenate(truths)
    psnr = np.asarray(metrics.psnr(preds, truths))
    fits = min(truths.shape[-3:-1]) >= metrics.SSIMParams().win_size
    scores = {"psnr": float(np.nanmean(psnr)),
              "ssim": float(np.nanmean(metrics.ssim(preds, truths))) if fits else None,
              "course_score": data.course_score(preds)}
    return psnr, scores, preds


def new_run_dir(cfg: Config) -> pathlib.Path:
    """save_root/run_name, or save_root/<model>_<preset>_<start time> (process 0's time in
    every process of a multi-process run)."""
    if cfg.run_name:
        return pathlib.Path(cfg.save_root) / cfg.run_name
    now = datetime.datetime.now()
    day, time_of_day = distributed.from_main([int(f"{now:%Y%m%d}"), int(f"{now:%H%M%S}")])
    return pathlib.Path(cfg.save_root) / f"{cfg.model}_{cfg.preset}_{day:08d}-{time_of_day:06d}"


def _refuse_length_change(cfg: Config, new_epochs: int, run_dir) -> None:
    """A resume that changes --num_epoch keeps every schedule's period (the KL annealing's
    length stays the run's first --num_epoch or step count); a cosine learning rate, which
    reaches 0 at the end of the first length, cannot keep it usefully and is refused."""
    if new_epochs != cfg.num_epoch and cfg.lr_schedule == "cosine":
        raise ConfigError(f"--num_epoch cannot change on --resume of {run_dir}: its cosine --lr_schedule "
                          f"reaches 0 at the end of its {cfg.num_epoch} epochs; start a new run instead")


def _open_run(cfg: Config | None, resume, resume_changes: dict, log) -> tuple[Config, pathlib.Path, bool]:
    """(config, run folder, whether it continues a run): `--resume RUN`, or a new run whose
    folder already holds this same config (a requeued job re-running its command)."""
    if resume:
        run_dir = pathlib.Path(resume)
        saved = checkpointing.load_config(run_dir)
    else:
        cfg = cfg.validated()
        run_dir = new_run_dir(cfg)
        if not checkpointing.has_checkpoint(run_dir):
            return cfg, run_dir, False
        saved = checkpointing.load_config(run_dir)
        ours, theirs = cfg.flat(), saved.flat()
        resume_changes = {f: v for f, v in ours.items() if f in RESUME_FLAGS and v != theirs.get(f)}
        differing = [f for f, v in ours.items() if f not in RESUME_FLAGS and theirs.get(f) != v]
        if cfg.model != saved.model or differing:
            first = "model" if cfg.model != saved.model else differing[0]
            was = saved.model if first == "model" else theirs.get(first)
            raise RunExistsError(f"{run_dir} already holds a run with another config (--{first} {was!r} there, "
                                 f"{getattr(cfg, first)!r} here); choose another --run_name, or pass --resume "
                                 f"{run_dir} to continue it")
        log(f"{run_dir} holds this run: continuing it")
    check_resume_changes(resume_changes, run_dir)
    if "num_epoch" in resume_changes:
        _refuse_length_change(saved, resume_changes["num_epoch"], run_dir)
    return saved.replace(**resume_changes).validated(), run_dir, True


def train_and_evaluate(cfg: Config | None = None, resume: str | None = None,
                       num_epoch: int | None = None, log=print, **resume_changes) -> pathlib.Path:
    """Train (or continue) a run; returns the run folder.

    A run continues from its latest complete checkpoint when `resume` names its folder, or
    when `cfg`'s run folder already holds a run of the same config. `num_epoch` and
    `resume_changes` may change only the flags marked `resume` (`config.RESUME_FLAGS`);
    schedules keep their period (`_refuse_length_change`).

    SIGTERM or SIGINT (in one process; SIGTERM to any process of a multi-process run)
    saves a checkpoint after the current step and raises `distributed.Preempted`.
    In a multi-process run every process calls this with the same arguments; only
    process 0 writes files and calls `log`.
    """
    t_start = time.perf_counter()
    main = distributed.is_main()
    log = log if main else _silent
    if num_epoch is not None:
        resume_changes["num_epoch"] = num_epoch
    cfg, run_dir, resuming = _open_run(cfg, resume, resume_changes, log)
    records = _read_records(run_dir) if resuming else []  # a new run's folder may hold a failed start's
    mesh = data_mesh()
    if cfg.batch_size % mesh.size:
        where = f" of the {jax.process_count()} processes" if jax.process_count() > 1 else ""
        raise ConfigError(f"--batch_size {cfg.batch_size} must be divisible by the {mesh.size} devices{where}")
    data = models.family(cfg.model).load_data(cfg, log=log)  # a bad dataset stops the run before it has a folder
    base_key = jax.random.key(cfg.seed)
    graphdef, state = init_state(cfg, jax.random.fold_in(base_key, 0))
    if main:
        checkpointing.check_room(run_dir, state, cfg.keep_last)  # a full or read-only disk stops it here too
    distributed.sync("cvae_jax: run folder read")  # before process 0 writes into it
    if main:
        checkpointing.save_config(run_dir, cfg)
    batch_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())

    last_mgr, best_mgr = checkpointing.managers(run_dir, cfg.keep_last)
    progress = Progress(adaptive_tfr=schedules.AdaptiveTFR(cfg.tfr).to_dict() if cfg.tfr_adaptive else None,
                        schedule_epochs=cfg.num_epoch, schedule_steps=total_steps(cfg, data))
    state = distributed.global_array(state, replicated)
    if resuming:
        state, meta, step = checkpointing.restore_latest_complete(last_mgr, state, log)
        base_key = checkpointing.key_from_json(meta["key"])
        progress = Progress.from_json(meta, cfg, data)
        records = [r for r in records if r["epoch"] < progress.epoch]
        log(f"resuming {run_dir} at epoch {progress.epoch}, step {progress.step_in_epoch} of it "
            f"(checkpoint {step})")
    if main:
        _write_records(run_dir, records)

    train_step = make_train_step(graphdef, cfg)
    predict = make_predict(graphdef, cfg)
    baseline = data.baseline_psnr()
    global_step = int(state.step)
    stop = _StopSignals()
    logs = run_logs.RunLogs(run_dir, global_step, enabled=main)
    pending = None  # (metrics on the device, epoch, global step, schedule) of the last dispatched step
    rate = [time.perf_counter(), 0]  # start of the training time since the last logged line, its steps

    def drain():
        """Host copy of the last step's metrics; a non-finite loss stops the run (that step
        left the state unchanged: `train_step.make_train_step`). Every --log_every steps
        the mean metrics since the previous line go to steps.jsonl and TensorBoard, with
        the training steps per second (validation and checkpoints not counted)."""
        nonlocal pending
        if pending is None:
            return
        m, epoch, step, step_sched = pending
        pending = None
        m = {k: float(v) for k, v in distributed.to_host(m).items()}
        if not np.isfinite(m["loss"]) or not np.isfinite(m["grad_norm"]):
            saved = (f"the last checkpoint in {run_dir / 'checkpoints'} is intact"
                     if last_mgr.latest_step() is not None else
                     f"no checkpoint was saved yet in {run_dir / 'checkpoints'}")
            raise FloatingPointError(f"non-finite loss {m['loss']} at epoch {epoch}, step {step}; "
                                     f"{saved} (lower --lr?)")
        for k, v in m.items():
            progress.sums[k] = progress.sums.get(k, 0.0) + v
            progress.log_sums[k] = progress.log_sums.get(k, 0.0) + v
        progress.n_done += 1
        progress.log_n += 1
        rate[1] += 1
        if (step + 1) % cfg.log_every == 0:
            now = time.perf_counter()
            logs.step({"step": step + 1, "epoch": epoch,
                       **{k: v / progress.log_n for k, v in progress.log_sums.items()},
                       **{k: float(v) for k, v in step_sched._asdict().items()},
                       "steps_per_s": rate[1] / max(now - rate[0], 1e-9), "seconds": round(now - t_start, 1)})
            progress.log_sums, progress.log_n, rate[:] = {}, 0, [now, 0]
        bar.set_postfix(loss=f"{m['loss']:.4f}", mse=f"{m['mse']:.4f}", kl=f"{m['kl']:.1f}", refresh=False)

    bar = None
    with stop, logs:
        for epoch in range(progress.epoch, cfg.num_epoch):
            n_steps = data.steps_in_epoch(epoch)
            sched = schedule_at(cfg, epoch, global_step, progress)
            bar = tqdm(total=n_steps, initial=progress.step_in_epoch, desc=f"epoch {epoch}",
                       dynamic_ncols=True, leave=False, disable=not main)
            batches = itertools.islice(data.epoch_batches(epoch), progress.step_in_epoch, n_steps)
            batches = _prefetched(batches) if PIPELINE else batches
            for i, batch in enumerate(batches, start=progress.step_in_epoch):
                sched = schedule_at(cfg, epoch, global_step, progress)
                epoch_key, step_key = _keys(base_key, epoch, global_step)
                state, m = train_step(state, distributed.global_array(batch, batch_sharding), sched,
                                      epoch_key, step_key)
                drain()  # the previous step's metrics, read while this one runs
                pending = (m, epoch, global_step, sched)
                if not PIPELINE:
                    drain()
                global_step += 1
                progress.step_in_epoch = i + 1
                bar.update(1)
                signum = stop.requested(global_step, distributed.preemption_requested(global_step))
                if signum:
                    drain()
                    bar.close()
                    _save_stopped(last_mgr, state, progress, base_key, cfg, run_dir, signum, log)
                    raise distributed.Preempted(signum)
            drain()
            bar.close()
            paused = time.perf_counter()
            record = {"epoch": epoch, **{k: v / max(progress.n_done, 1) for k, v in progress.sums.items()},
                      "beta": float(sched.beta), "tfr": float(sched.tfr), "lr": float(sched.lr),
                      "steps": global_step, "seconds": round(time.perf_counter() - t_start, 1)}
            if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.num_epoch:
                psnr, scores, preds = validate(predict, state, data, base_key, replicated)
                record.update({f"val_{k}": v for k, v in scores.items() if v is not None})
                _after_validation(cfg, progress, record["val_psnr"])
                if main:
                    video = media.side_by_side(*data.gif_panels(0, preds[0]))
                    _write_run_figures(run_dir, records + [record], psnr, video, data, baseline)
                    logs.validation(global_step, scores, media.frame_strip(video))
            progress.epoch, progress.step_in_epoch, progress.sums, progress.n_done = epoch + 1, 0, {}, 0
            records.append(record)
            if main:
                _write_records(run_dir, records)
            log(_epoch_line(record, float(np.mean(baseline)), data.baseline_name))
            if (epoch + 1) % cfg.per_save == 0 or epoch + 1 == cfg.num_epoch:
                meta = progress.to_json(base_key, cfg)
                checkpointing.save(last_mgr, global_step, state, meta)
                if record.get("val_psnr") is not None:
                    checkpointing.save(best_mgr, global_step, state, meta, {"val_psnr": record["val_psnr"]})
            rate[0] += time.perf_counter() - paused
    last_mgr.wait_until_finished()
    best_mgr.wait_until_finished()
    log(_summary(run_dir, records, baseline, data.baseline_name, time.perf_counter() - t_start))
    return run_dir


class _StopSignals:
    """SIGTERM and SIGINT ask the loop to stop after the current step (it then saves); a
    second SIGINT interrupts at once. In a multi-process run JAX's preemption service owns
    SIGTERM and makes every process stop at the same step (`distributed.preemption_requested`),
    so SIGINT is handed to it as a SIGTERM to this process."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum, self._previous, self._self_signal = None, {}, None

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum
        if jax.process_count() > 1:
            os.kill(os.getpid(), signal.SIGTERM)

    def requested(self, global_step: int, preempted: bool):
        """The signal to stop on after `global_step` steps, if any; in a multi-process run
        only at the step every process agreed on (`preempted`)."""
        if self._self_signal and self._self_signal[1] == global_step:
            os.kill(os.getpid(), self._self_signal[0])
        if jax.process_count() > 1:
            return (self.signum or signal.SIGTERM) if preempted else None
        return self.signum

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach Python's main thread only
        if jax.process_count() == 1:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        elif jax.config.jax_enable_preemption_service:
            self._previous = {signal.SIGINT: signal.signal(signal.SIGINT, self._handle)}
        if self._previous:
            if os.environ.get(SELF_SIGNAL_ENV):  # the resume tests' clock: a real signal at a set step
                name, _, step = os.environ[SELF_SIGNAL_ENV].partition("@")
                self._self_signal = (signal.Signals[name], int(step))
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


# Batches built on a thread and metrics read a step late, so the host never stalls the
# device; False is the serial loop, kept for benchmarks/loop.py's comparison.
PIPELINE = True
SELF_SIGNAL_ENV = "CVAE_JAX_TEST_SIGNAL"  # "SIGTERM@3": the process signals itself after global step 3


def _prefetched(batches, depth: int = 2):
    """Batches built on a worker thread, `depth` ahead of the step that takes them."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work():
        try:
            for b in batches:
                q.put(b)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)
        q.put(done)

    threading.Thread(target=work, daemon=True, name="cvae_jax-batches").start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def _silent(line: str) -> None:
    """`log` in processes other than 0."""


def _save_stopped(manager, state, progress, base_key, cfg, run_dir, signum, log) -> None:
    """Checkpoint mid-epoch (the partial epoch sums with it) and say how to continue."""
    step = int(state.step)
    if step not in manager.all_steps():
        checkpointing.save(manager, step, state, progress.to_json(base_key, cfg))
    manager.wait_until_finished()
    log(f"stopped by {signal.Signals(signum).name} at epoch {progress.epoch}, step {progress.step_in_epoch} "
        f"of it: saved {pathlib.Path(manager.directory) / str(step)}; continue with the same command, or "
        f"train.py --resume {run_dir}")


def _after_validation(cfg: Config, progress: Progress, val_psnr: float) -> None:
    if cfg.tfr_adaptive:
        state = schedules.AdaptiveTFR.from_dict(progress.adaptive_tfr)
        progress.adaptive_tfr = schedules.adaptive_tfr_update(state, val_psnr, cfg.tfr_d_step,
                                                              cfg.tfr_floor).to_dict()


def _write_run_figures(run_dir, records, psnr, video, data, baseline) -> None:
    plots.plot_training(records, run_dir / "training.png")
    plots.plot_psnr_per_frame(psnr, run_dir / "val_psnr_per_frame.png",
                              "validation PSNR per frame (z from the prior)", baseline=baseline,
                              first_frame_index=data.first_scored_frame)
    media.write_psnr_csv(run_dir / "val_psnr_per_frame.csv", psnr, first_frame_index=data.first_scored_frame)
    media.write_gif(video, run_dir / "val_video0.gif")


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
             f"  metrics: {run_dir / run_logs.EPOCHS_FILE} (epochs), {run_dir / run_logs.STEPS_FILE} (steps); "
             f"config: {run_dir / checkpointing.CONFIG_FILE}",
             f"  TensorBoard: tensorboard --logdir {run_dir.parent}"]
    if val:
        lines += [f"  plots: {run_dir / 'training.png'}, {run_dir / 'val_psnr_per_frame.png'}; "
                  f"GIF: {run_dir / 'val_video0.gif'}",
                  f"final validation PSNR {val[-1]:.2f} dB vs {baseline_name} baseline "
                  f"{float(np.mean(baseline)):.2f} dB ({val[-1] - float(np.mean(baseline)):+.2f} dB)"]
    lines.append(f"total time {seconds:.0f} s")
    return "\n".join(lines)


def _read_records(run_dir: pathlib.Path) -> list[dict]:
    return run_logs.read_jsonl(run_dir / run_logs.EPOCHS_FILE)


def _write_records(run_dir: pathlib.Path, records: list[dict]) -> None:
    run_logs.write_jsonl(run_dir / run_logs.EPOCHS_FILE, records)
