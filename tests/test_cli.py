"""The command lines and the config they build: grouped help on every flag, flags of the
other model and config flags given with --resume refused in one line, the console
scripts, config versions, and a run folder written by an earlier cvae-jax (config.json
without a version; tests/fixtures/run_v1) loading in a notebook and in evaluate.py."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from conftest import ROOT, exit_and_stderr
from cvae_jax import cli
from cvae_jax.config import FLAGS, MODEL_SECTIONS, Config, field_of, model_of_flag, preset
from cvae_jax.errors import ConfigError

FIXTURE_V1 = ROOT / "tests" / "fixtures" / "run_v1"


@pytest.fixture
def run_v1(tmp_path) -> pathlib.Path:
    """A copy of the version-1 run folder (evaluation writes into it)."""
    return pathlib.Path(shutil.copytree(FIXTURE_V1, tmp_path / "run_v1"))


@pytest.mark.parametrize("argv,message", [
    (["--model", "lab4", "--prior", "learned"], "--prior applies to --model svg, not lab4"),
    (["--model", "svg", "--smooth_weight", "0.1"], "--smooth_weight applies to --model lab4, not svg"),
    (["--model", "lab4", "--vgg_width", "8"], "--vgg_width applies to --model svg, not lab4"),
    (["--vgg_width", "8"], "--vgg_width applies to --model svg, not lab4"),  # lab4 by default
    (["--model", "svg", "--F_dim", "64"], "--F_dim applies to --model lab4, not svg"),
    (["--model", "svg", "--output_sigmoid"], "--output_sigmoid applies to --model lab4, not svg"),
    (["--preset", "bair", "--frame_H", "8"], "--frame_H applies to --model lab4, not svg"),
])
def test_a_flag_of_the_other_model_is_a_usage_error(capsys, tmp_path, argv, message):
    code, err = exit_and_stderr(cli.train_main, [*argv, "--save_root", str(tmp_path)], capsys)
    assert code == 2 and err == f"cvae-jax-train: error: {message}\n"
    assert not any(tmp_path.iterdir())


def test_every_flag_has_one_line_of_help_with_its_default():
    text = cli.train_parser([]).format_help()
    for group in ("common:", "data:", "optimisation:", "schedules:", "run:", "Lab4 model (--model lab4):",
                  "SVG model (--model svg):", "execution:", "multi-process training:"):
        assert f"\n{group}\n" in text, group
    actions = [a for a in cli.train_parser([])._actions if a.dest != "help"]
    assert {a.dest for a in actions} >= set(FLAGS) | {"model", "preset", "resume", "coordinator"}
    for action in actions:
        assert action.help and action.help != argparse.SUPPRESS and len(action.help.split()) > 3, action.option_strings
        if action.dest in FLAGS or action.dest in ("model", "preset", "resume"):
            assert "(default: " in action.help, action.option_strings
    # choices are listed with the flag
    assert "--tf_mode {epoch,batch,clip,frame,blend}" in text and "--prior {fixed,learned}" in text


def test_help_shows_the_chosen_model_and_preset():
    svg = cli.train_parser(["--model", "svg", "--preset", "bair"]).format_help()
    assert "--vgg_width" in svg and "--F_dim" not in svg and "Lab4 model" not in svg
    assert re.search(r"--batch_size BATCH_SIZE\s+clips per training step \(all devices together\)\s+"
                     r"\(default: 12\)", svg)
    lab4 = cli.train_parser(["--preset", "lab4"]).format_help()
    assert re.search(r"\(default: 128\)", lab4) and re.search(r"--F_dim F_DIM\s+frame feature channels "
                                                              r"\(default: 128\)", lab4)


def test_console_scripts_and_module_entry_point():
    bindir = pathlib.Path(sys.executable).parent
    for command in ([str(bindir / "cvae-jax-train"), "--help"], [sys.executable, "-m", "cvae_jax", "evaluate", "--help"]):
        if not pathlib.Path(command[0]).exists():
            pytest.fail(f"{command[0]} is not installed: pip install -e . installs the console scripts")
        proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "cvae_jax", "fit"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "python -m cvae_jax {train,evaluate}" in proc.stderr


@pytest.mark.parametrize("argv,message", [
    (["--lr", "0.1"], "--lr cannot change on --resume"),
    (["--vgg_width", "4"], "--vgg_width cannot change on --resume"),
    (["--model", "svg"], "--model cannot change on --resume"),
])
def test_config_flags_with_resume_are_refused_by_name(capsys, run_v1, argv, message):
    before = sorted(p.name for p in run_v1.rglob("*"))
    code, err = exit_and_stderr(cli.train_main, ["--resume", str(run_v1), *argv], capsys)
    assert code == 2 and err.startswith(f"cvae-jax-train: error: {message}") and err.count("\n") == 1
    assert "--num_epoch" in err  # says what may change
    assert sorted(p.name for p in run_v1.rglob("*")) == before


def test_resume_flags_are_how_not_what():
    assert {"num_epoch", "scan_unroll", "remat", "conv_impl", "log_every"} <= set(cli.RESUME_FLAGS)
    assert not {"lr", "batch_size", "precision", "tfr", "F_dim", "seed"} & set(cli.RESUME_FLAGS)


def test_sections_hold_every_flag_once_and_each_validates_itself():
    cfg = preset("cpu")
    assert set(cfg.flat()) == {f for f in FLAGS if model_of_flag(f) in (None, "lab4")}
    assert cfg.tfr == cfg.schedule.tfr and cfg.F_dim == cfg.arch.F_dim
    with pytest.raises(AttributeError, match="--n_past applies to --model svg"):
        cfg.n_past
    with pytest.raises(ConfigError, match="--lr must be positive"):
        cfg.optim.__class__(lr=0).validated()
    with pytest.raises(ConfigError, match=r"--n_past \+ --n_future"):
        MODEL_SECTIONS["svg"](n_past=25).validated()
    for flag in FLAGS:
        assert field_of(flag).metadata["help"], flag
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0
    svg = cfg.replace(model="svg")
    assert svg.arch == MODEL_SECTIONS["svg"]() and svg.lr == cfg.lr


def test_config_versions():
    cfg = preset("svg_lp")
    data = cfg.to_json()
    assert data["version"] == 2 and set(data) == {"version", "model", "preset", "dataset", "optim",
                                                  "schedule", "run", "execution", "svg"}
    assert Config.from_json(json.loads(json.dumps(data))) == cfg
    with pytest.raises(ConfigError, match="version 3 is newer"):
        Config.from_json(dict(data, version=3))
    with pytest.raises(ConfigError, match="unknown fields \\['lr_warmup'\\]"):
        Config.from_json(dict(data, optim=dict(data["optim"], lr_warmup=5)))
    # version 1 wrote every flag flat, both models' included; the other model's are dropped
    flat = dict(preset("lab4").flat(), **{f: field_of(f).default for f in FLAGS if model_of_flag(f) == "svg"})
    assert Config.from_json(dict(flat, model="svg", preset="bair")).model == "svg"
    assert Config.from_json(dict(preset("cpu").flat(), model="lab4", preset="cpu")) == preset("cpu")


def test_a_version_1_run_folder_loads_in_a_notebook(run_v1):
    from cvae_jax import load_checkpoint
    from cvae_jax.lab4_evaluation import Lab4Model
    assert "version" not in json.loads((run_v1 / "config.json").read_text())
    m = load_checkpoint(run_v1)  # no best/ in the fixture: falls back to the latest
    assert isinstance(m, Lab4Model) and m.config.F_dim == 8 and m.config.preset == "lab4"
    assert m.meta["epoch"] == 1
    first, poses = np.full((8, 16, 3), 0.5, np.float32), np.ones((5, 8, 16, 3), np.float32)
    out = m.generate(first, poses, jax.random.key(0))
    assert out.shape == (5, 8, 16, 3) and np.isfinite(out).all()
    np.testing.assert_array_equal(out, m.generate(first, poses, jax.random.key(0)))
    with pytest.raises(AttributeError, match="Lab4Model .*no 'predict'; it offers .*'generate'"):
        m.predict


def test_a_version_1_run_folder_evaluates(run_v1, tmp_path, capsys, keep_cache_config):
    res = cli.evaluate_main(["--run", str(run_v1), "--out", str(tmp_path / "eval")])
    assert np.isfinite(res["mean_psnr"]) and res["psnr"].shape == (1, 1, 15)
    # 8x16 frames: smaller than SSIM's 11-pixel window, so no SSIM, and the log says why
    assert (tmp_path / "eval" / "psnr_per_frame.csv").read_text().startswith("video,frame,psnr\n")
    assert res["ssim"] is None and not (tmp_path / "eval" / "ssim_per_frame.png").exists()
    assert "SSIM not computed: 8x16 frames are smaller than its 11-pixel window" in capsys.readouterr().out
    code, err = exit_and_stderr(cli.evaluate_main, ["--run", str(run_v1), "--n_future", "5"], capsys)
    assert code == 2 and err == "cvae-jax-evaluate: error: --n_future applies to --model svg, not lab4\n"


@pytest.mark.parametrize("case", ["under a file", "disk full"])
def test_an_unwritable_or_full_save_root_stops_before_training(case, tmp_path, capsys, monkeypatch, keep_cache_config):
    from cvae_jax import checkpointing
    from test_training import cli_flags, tiny_config
    (tmp_path / "file").write_text("not a folder")
    save_root = tmp_path / "file" / "runs" if case == "under a file" else tmp_path / "runs"
    if case == "disk full":
        monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=1000))
    argv = cli_flags(tiny_config(tmp_path, save_root=str(save_root), run_name="r"))
    code, err = exit_and_stderr(cli.train_main, argv, capsys)
    problem = (f"{tmp_path / 'file'} is not a folder" if case == "under a file" else
               "its disk has 0.0 MiB free, its checkpoints need about")
    assert code == 2 and err.startswith(f"cvae-jax-train: error: --save_root: cannot write the run folder "
                                        f"{save_root / 'r'}: {problem}") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_console_scripts_exit_0_after_success(monkeypatch):
    """pip's console-script wrapper is `sys.exit(target())`: a target that returned a run
    folder or a dict would print it and exit 1, so every target returns None."""
    import importlib
    import tomllib
    from cvae_jax import cli
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"cvae-jax-train", "cvae-jax-evaluate", "cvae-jax-convert", "cvae-jax-report"}
    monkeypatch.setattr(cli, "train_main", lambda argv=None: ROOT)
    monkeypatch.setattr(cli, "evaluate_main", lambda argv=None: {"mean_psnr": 20.0})
    for name in ("cvae-jax-train", "cvae-jax-evaluate"):
        module, _, func = scripts[name].partition(":")
        assert getattr(importlib.import_module(module), func)() is None, name
