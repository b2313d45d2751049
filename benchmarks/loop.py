"""The training loop's own cost: steps/s of whole `train_and_evaluate` epochs, pipelined
(batches built on a thread, metrics read a step late) against serial, alternating in one
process.

Why: the step itself is measured by ab.py; this measures what the loop around it adds
(host copies of the metrics, the NaN check, building batches) on the preset's real data.
Each variant trains --epochs epochs of --steps steps with no validation until the last
epoch; an epoch's time is the difference of consecutive records' `seconds` (taken before
validation), the first epoch (compile) excluded. Variants alternate run by run.

    python benchmarks/loop.py --rounds 3 --json benchmarks/results/loop_cpu.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import _timing as tm  # noqa: E402
from cvae_jax import cli, training  # noqa: E402
from cvae_jax.config import preset  # noqa: E402


def run_once(cfg, pipelined: bool) -> list[float]:
    """Seconds per epoch after the first."""
    training.PIPELINE = pipelined
    run = training.train_and_evaluate(cfg, log=lambda line: None)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in records]
    return [b - a for a, b in zip(seconds[:-1], seconds[1:])]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lab4")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=20, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not timed)")
    p.add_argument("--rounds", type=int, default=3, help="runs per variant, alternating")
    p.add_argument("--json", metavar="OUT.json")
    a = p.parse_args(argv)
    cli.enable_compilation_cache()  # every run after the first loads its programs from disk
    root = pathlib.Path(tempfile.mkdtemp(prefix="cvae_jax_loop_"))
    base = preset(a.preset, a.model).replace(num_epoch=a.epochs, steps_per_epoch=a.steps, val_every=10**6,
                                             save_root=str(root), per_save=10**6)
    epochs = {"serial": [], "pipelined": []}
    for r in range(a.rounds):
        for name in epochs:
            epochs[name] += run_once(base.replace(run_name=f"{name}{r}"), name == "pipelined")
    info = tm.cpu_info()
    result = {"date": tm.now(), "cpu": info["model"], "cores": info["cores"], "versions": tm.versions(),
              "model": a.model, "preset": a.preset, "steps_per_epoch": a.steps, "rounds": a.rounds,
              "command": "python benchmarks/loop.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    for name, secs in epochs.items():
        result[name] = {"epoch_s": secs, "median_steps_per_s": a.steps / statistics.median(secs)}
        print(f"{name:>9}: {result[name]['median_steps_per_s']:.3f} steps/s (median of {len(secs)} epochs)")
    result["ratio_pipelined_to_serial"] = (result["pipelined"]["median_steps_per_s"]
                                          / result["serial"]["median_steps_per_s"])
    print(f"pipelined / serial steps/s: {result['ratio_pipelined_to_serial']:.3f}")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
