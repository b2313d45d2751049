"""What a run logs while it trains: epoch records (`metrics.jsonl`), a line per logging
step (`steps.jsonl`) and TensorBoard event files, all in the run folder.

`steps.jsonl` is appended, never rewritten while a run trains. A continued run keeps the
lines up to its restored checkpoint's step and drops later ones (written after that
checkpoint by the run that stopped), so every logged step appears once. TensorBoard is
told the same with `purge_step`. `cvae_jax.report` reads these files back.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from tensorboardX import SummaryWriter

from cvae_jax import media

EPOCHS_FILE = "metrics.jsonl"
STEPS_FILE = "steps.jsonl"


def read_jsonl(path) -> list[dict]:
    """The records of a JSON-lines file ([] when there is none). A last line cut short
    (the process was killed while writing it) is dropped; a bad line before it is an error."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}, line {i + 1}: not a JSON record") from None
    return records


def write_jsonl(path, records: list[dict]) -> None:
    media.write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in records).encode())


class RunLogs:
    """The step log and TensorBoard writer of one training process. `through_step` is the
    step the run continues from (0 for a new run): logged steps after it are dropped.
    Disabled (every method a no-op) in processes other than 0."""

    def __init__(self, run_dir, through_step: int, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        run_dir = pathlib.Path(run_dir)
        path = run_dir / STEPS_FILE
        write_jsonl(path, [r for r in read_jsonl(path) if r["step"] <= through_step])
        self._steps = path.open("a")
        # purge_step: TensorBoard drops the earlier event files' events from this step on
        self._tb = SummaryWriter(logdir=str(run_dir), purge_step=through_step + 1, flush_secs=30)

    def step(self, line: dict) -> None:
        """One logging step: a JSON line (flushed, so it survives a killed process) and
        its scalars in TensorBoard, under train/ (metrics) and schedule/ (beta, tfr, lr)."""
        if not self.enabled:
            return
        self._steps.write(json.dumps(line) + "\n")
        self._steps.flush()
        for k, v in line.items():
            if k not in ("step", "epoch", "seconds"):
                self._tb.add_scalar(f"{'schedule' if k in ('beta', 'tfr', 'lr') else 'train'}/{k}", v, line["step"])

    def validation(self, step: int, scores: dict, strip: np.ndarray | None = None) -> None:
        """An epoch's validation scores (val/psnr, ...) and one video's frames as an image."""
        if not self.enabled:
            return
        for k, v in scores.items():
            if v is not None:
                self._tb.add_scalar(f"val/{k}", v, step)
        if strip is not None:
            self._tb.add_image("val/video0", strip, step, dataformats="HWC")
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._steps.close()
            self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
