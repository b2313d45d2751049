"""cvae-jax-convert: a run folder -> the course template's checkpoint -> a run folder is
bit-identical; the template's model (benchmarks/torch_ref, built from the course layer
table) loads the written state_dict strictly and generates what cvae-jax generates, in
both BatchNorm modes; a template checkpoint becomes a run folder that evaluate.py scores;
bad input is one line, exit 2, nothing written.

Dims F 128, L 32 (the template derives the encoder widths from them; cvae-jax's are the
template's there), N 4, D 16 and 8x16 frames keep each test to seconds."""

from __future__ import annotations

import pathlib
import sys
import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

from benchmarks.torch_ref import lab4 as tlab4  # noqa: E402
from conftest import ROOT, exit_and_stderr, random_model  # noqa: E402
from test_torch_reference import nchw, nhwc, one_torch_thread  # noqa: E402,F401 (a fixture)
from cvae_jax import checkpointing, convert, load_checkpoint  # noqa: E402
from cvae_jax.config import preset  # noqa: E402
from cvae_jax.models import lab4  # noqa: E402
from cvae_jax.train_step import TrainState, make_optimizer  # noqa: E402
from cvae_jax.training import Progress  # noqa: E402

DIMS = dict(F_dim=128, L_dim=32, N_dim=4, D_out_dim=16)
H, W, T, B = 8, 16, 4, 2
STEP, EPOCH = 5, 3  # the fixture run's applied steps and epochs
SMALL = dict(frame_H=H, frame_W=W, train_vi_len=T, val_vi_len=6, synthetic_train_videos=1)
SMALL_FLAGS = ["--frame_H", str(H), "--frame_W", str(W), "--train_vi_len", str(T), "--val_vi_len", "6",
               "--synthetic_train_videos", "1"]


def assert_close(got, want, rtol=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.abs(want).max()))


def write_jax_run(run_dir: pathlib.Path, seed: int = 3):
    """A lab4 run folder at DIMS with random weights and BatchNorm running averages (as
    checkpointing writes the trainer's), STEP applied steps, EPOCH epochs done."""
    cfg = preset("lab4").replace(**DIMS, **SMALL, cache_dir=str(run_dir.parent / "cache"),
                                 save_root=str(run_dir.parent), run_name=run_dir.name).validated()
    _, params, stats = nnx.split(random_model(seed=seed, **DIMS), nnx.Param, nnx.BatchStat)
    state = TrainState(params, stats, jax.jit(make_optimizer(cfg).init)(params), jnp.asarray(STEP, jnp.int32))
    meta = Progress(epoch=EPOCH, schedule_epochs=cfg.num_epoch, schedule_steps=40).to_json(jax.random.key(1), cfg)
    checkpointing.write_run(run_dir, cfg, state, meta)
    return cfg


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory) -> pathlib.Path:
    run = tmp_path_factory.mktemp("convert") / "jax_run"
    write_jax_run(run)
    return run


@pytest.fixture(scope="module")
def written(jax_run) -> pathlib.Path:
    out = jax_run.parent / "model.ckpt"
    convert.main(["to-torch", str(jax_run), str(out)])
    return out


def template_eps(key, n_steps: int, batch: int) -> list[torch.Tensor]:
    """The z cvae-jax's rollout draws at each step from `key`, as torch tensors."""
    return [nchw(jax.random.normal(k, (batch, H, W, DIMS["N_dim"]))) for k in jax.random.split(key, n_steps)]


def clip(seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((B, H, W, 3), dtype=np.float32), rng.random((B, T, H, W, 3), dtype=np.float32)


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


# --------------------------------------------------------------------------- to-torch


def test_the_checkpoint_is_the_templates_save(jax_run, written):
    ckpt = torch.load(written, weights_only=True)  # what torch >= 2.6's plain torch.load reads
    assert list(ckpt) == ["state_dict", "optimizer", "lr", "tfr", "last_epoch"]
    sd = ckpt["state_dict"]
    template = tlab4.build(**DIMS).state_dict()
    assert list(sd) == list(template) and len(sd) == 209  # names and registration order
    for name, value in template.items():
        assert sd[name].shape == value.shape and sd[name].dtype == value.dtype, name
    # the template's save() stores the model's state_dict again as "optimizer"
    assert list(ckpt["optimizer"]) == list(sd)
    assert all(torch.equal(ckpt["optimizer"][k], v) for k, v in sd.items())
    # one BatchNorm update per predicted frame per applied step; the values of epoch EPOCH-1
    assert sd["label_transformation.2.num_batches_tracked"].item() == STEP * (T - 1)
    assert ckpt["last_epoch"] == EPOCH - 1 and isinstance(ckpt["last_epoch"], int)
    assert ckpt["lr"] == pytest.approx(1e-4) and ckpt["tfr"] == 1.0  # multistep (2, 5): epoch 2
    # OIHW: the first conv's weight is the HWIO kernel transposed; depthwise (C, 1, 3, 3)
    m = load_checkpoint(jax_run)
    kernel = np.asarray(m.params["frame_encoder"]["layers"][0]["conv1"]["kernel"][...])
    np.testing.assert_array_equal(sd["frame_transformation.0.conv1.weight"].numpy(), kernel.transpose(3, 2, 0, 1))
    depthwise = np.asarray(m.params["fusion"]["layers"][0]["depth"]["depth_conv"]["kernel"][...])
    np.testing.assert_array_equal(sd["Decoder_Fusion.0.block.0.depth_conv.weight"].numpy()[:, 0],
                                  depthwise.transpose(2, 0, 1))
    np.testing.assert_array_equal(sd["label_transformation.2.running_var"].numpy(),
                                  np.asarray(m.batch_stats["pose_encoder"]["bn"]["var"][...]))


def test_at_the_reference_dims_every_name_and_shape_is_the_templates():
    """The course's own dims (F 128, L 32, N 12, D 192): the mapping gives the template's
    209 entries with its shapes, in its order."""
    from cvae_jax import torch_layout
    _, like = checkpointing.abstract_state(preset("lab4"))
    want = {k: tuple(v.shape) for k, v in tlab4.build().state_dict().items()}
    got = torch_layout.expected_shapes(like.params, like.batch_stats)
    assert list(got.items()) == list(want.items())


def test_the_template_model_loads_it_strictly_and_generates_the_same(jax_run, written):
    tm = tlab4.build(**DIMS)
    tm.load_state_dict(torch.load(written, weights_only=True)["state_dict"], strict=True)
    m = load_checkpoint(jax_run)
    first, poses = clip()
    key = jax.random.key(4)
    eps = template_eps(key, T - 1, B)
    # running averages: cvae-jax's default generation, the template model in eval mode
    want = m.generate(first, poses, key)
    got = tlab4.generate(tm.eval(), nchw(first), nchw(poses), z=eps)
    assert_close(nhwc(got), want)
    # batch statistics: the template's Tester, whose model never leaves training mode
    model = nnx.merge(m._graphdef, m.params, m.batch_stats)
    want = lab4.generate(model, jnp.asarray(first), jnp.asarray(poses), key, bn_mode="batch")
    got = tlab4.generate(tm.train(), nchw(first), nchw(poses), z=eps)
    assert_close(nhwc(got), want)
    assert not np.allclose(want, m.generate(first, poses, key))  # the two modes differ: both checked


def test_round_trip_is_bit_identical(jax_run, written, tmp_path):
    back = tmp_path / "back"
    convert.main(["from-torch", str(written), "--out", str(back), *SMALL_FLAGS,
                  "--cache_dir", str(jax_run.parent / "cache")])
    cfg0, _, s0, meta0 = checkpointing.restore_run(jax_run)
    cfg1, _, s1, meta1 = checkpointing.restore_run(back)
    for a, b in zip(leaves((s0.params, s0.batch_stats)), leaves((s1.params, s1.batch_stats)), strict=True):
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)
    assert jax.tree.structure(s0.params) == jax.tree.structure(s1.params)
    assert cfg1 == cfg0.replace(save_root=str(tmp_path), run_name="back")
    assert meta1["epoch"] == meta0["epoch"] == EPOCH and meta1["converted_from"] == str(written.resolve())
    # Adam's moments are not in the template's format: a fresh optimizer state
    assert int(s1.step) == 0 and all(not a.any() for a in leaves(s1.opt_state))
    convert.main(["to-torch", str(back), str(tmp_path / "again.ckpt")])
    again = torch.load(tmp_path / "again.ckpt", weights_only=True)["state_dict"]
    first = torch.load(written, weights_only=True)["state_dict"]
    assert all(torch.equal(again[k], v) for k, v in first.items() if "num_batches" not in k)


# --------------------------------------------------------------------------- from-torch


def template_checkpoint(path: pathlib.Path, bare: bool = False, **dims) -> torch.nn.Module:
    """A course model with PyTorch's initialisation and trained-looking running averages,
    saved as the template's save() saves it (or as a bare state_dict)."""
    torch.manual_seed(0)
    model = tlab4.build(**{**DIMS, **dims})
    bn = model.label_transformation[2]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.num_batches_tracked.fill_(12345)
    sd = model.state_dict()
    torch.save(sd if bare else {"state_dict": sd, "optimizer": model.state_dict(), "lr": 1e-5, "tfr": 0.4,
                                "last_epoch": 9}, path)
    return model


def test_a_template_checkpoint_becomes_a_run_that_evaluates(tmp_path, capsys, keep_cache_config):
    ckpt, run = tmp_path / "epoch=9.ckpt", tmp_path / "runs" / "course"
    run.parent.mkdir()
    tm = template_checkpoint(ckpt)
    convert.main(["from-torch", str(ckpt), "--out", str(run), *SMALL_FLAGS, "--cache_dir", str(tmp_path / "cache")])
    assert "wrote" in capsys.readouterr().out
    # what the trainer leaves: config, the checkpoint, best/, metrics; nothing else in runs/
    assert sorted(p.name for p in run.iterdir()) == ["best", "checkpoints", "config.json", "metrics.jsonl"]
    assert [p.name for p in run.parent.iterdir()] == ["course"]
    assert checkpointing.has_checkpoint(run)
    cfg = checkpointing.load_config(run)
    assert cfg == preset("lab4").replace(**DIMS, **SMALL, cache_dir=str(tmp_path / "cache"),
                                         save_root=str(run.parent), run_name="course")
    m = load_checkpoint(run)
    assert m.meta["epoch"] == 10 and m.config.output_sigmoid is False
    first, poses = clip(1)
    key = jax.random.key(2)
    got = m.generate(first, poses, key)
    want = tlab4.generate(tm.eval(), nchw(first), nchw(poses), z=template_eps(key, T - 1, B))
    assert_close(got, nhwc(want))
    from cvae_jax import cli
    res = cli.evaluate_main(["--run", str(run), "--out", str(tmp_path / "eval")])
    assert np.isfinite(res["mean_psnr"]) and res["psnr"].shape == (1, 1, 5)


def test_a_bare_state_dict_and_dim_flags_that_agree(tmp_path):
    ckpt = tmp_path / "weights.pt"
    template_checkpoint(ckpt, bare=True)
    run = convert.from_torch(ckpt, tmp_path / "run", {"F_dim": 128, "N_dim": 4, **SMALL}, log=lambda s: None)
    cfg, _, state, meta = checkpointing.restore_run(run)
    assert (cfg.F_dim, cfg.L_dim, cfg.N_dim, cfg.D_out_dim) == tuple(DIMS.values()) and meta["epoch"] == 0


# --------------------------------------------------------------------------- bad input


def state_dict(**dims):
    return tlab4.build(**{**DIMS, **dims}).state_dict()


def bad_file(tmp_path, case) -> pathlib.Path:
    """A file that is not a course checkpoint the way `case` says."""
    path = tmp_path / "bad.ckpt"
    sd = state_dict()
    if case == "text file":
        path.write_text("epoch 9, loss 0.01\n")
    elif case == "a list":
        torch.save([1, 2], path)
    elif case == "no state_dict":
        torch.save({"model": 1, "lr": 0.1}, path)
    elif case == "missing entry":
        del sd["Generator.7.bias"]
        torch.save({"state_dict": sd, "last_epoch": 0}, path)
    elif case == "extra entry":
        sd["Generator.8.weight"] = torch.zeros(3)
        torch.save({"state_dict": sd}, path)
    elif case == "wrong shape":
        sd["Decoder_Fusion.1.conv2.weight"] = torch.zeros(40, 41, 3, 3)
        torch.save({"state_dict": sd}, path)
    elif case == "F_dim 64":
        torch.save({"state_dict": state_dict(F_dim=64)}, path)
    elif case == "N_dim 6":
        torch.save({"state_dict": state_dict(N_dim=6)}, path)
    elif case == "integer weights":
        sd["Generator.7.bias"] = torch.zeros(3, dtype=torch.int32)
        torch.save({"state_dict": sd}, path)
    elif case == "bad last_epoch":
        torch.save({"state_dict": sd, "last_epoch": "nine"}, path)
    return path


@pytest.mark.parametrize("case,message", [
    ("missing", "not found: expected the course template's checkpoint (a dict with state_dict, optimizer, lr, tfr, "
     "last_epoch) or a model state_dict"),
    ("text file", "is not a PyTorch checkpoint (torch.load: "),
    ("a list", "holds a list; expected the course template's checkpoint"),
    ("no state_dict", "holds a dict with keys ['lr', 'model']; expected"),
    ("missing entry", "its state_dict lacks 1 entries of the course model at F_dim 128, L_dim 32, N_dim 4, "
     "D_out_dim 16, e.g. ['Generator.7.bias']"),
    ("extra entry", "has 1 entries the course model at F_dim 128, L_dim 32, N_dim 4, D_out_dim 16 does not, "
     "e.g. ['Generator.8.weight']"),
    ("wrong shape", "'Decoder_Fusion.1.conv2.weight' is (40, 41, 3, 3), the course model at F_dim 128, L_dim 32, "
     "N_dim 4, D_out_dim 16 has (41, 41, 3, 3)"),  # (F + L + N) // 4 = 41
    ("F_dim 64", "its encoder widths are (8, 16, 32, 16) (the template's at F_dim 64, L_dim 32); cvae-jax's Lab4 "
     "model fixes them at (16, 32, 64, 16)"),
    ("N_dim 6", "holds a model at F_dim 128, L_dim 32, N_dim 6, D_out_dim 16, which cvae-jax cannot build: "
     "--N_dim must be a multiple of 4"),
    ("integer weights", "'Generator.7.bias' holds torch.int32 values; expected floating-point weights"),
    ("bad last_epoch", "'last_epoch' is 'nine'; expected an epoch number >= 0"),
])
def test_a_bad_checkpoint_is_one_line_and_nothing_is_written(case, message, tmp_path, capsys):
    path = tmp_path / "none.ckpt" if case == "missing" else bad_file(tmp_path, case)
    before = sorted(tmp_path.iterdir())
    code, err = exit_and_stderr(convert.main, ["from-torch", str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err.startswith(f"cvae-jax-convert: error: {path}") and err.count("\n") == 1, err
    assert message in err, err
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("argv,message", [
    (["--F_dim", "64"], "--F_dim 64 does not match {ckpt}: its 'frame_transformation.6.weight' is "
     "(128, 64, 3, 3), i.e. F_dim 128 (leave --F_dim out: the dims are read from the checkpoint)"),
    (["--N_dim", "8"], "--N_dim 8 does not match {ckpt}: its 'Gaussian_Predictor.6.weight' is (8, 4, 1, 1), "
     "i.e. N_dim 4 (leave --N_dim out: the dims are read from the checkpoint)"),
    (["--prior", "learned"], "--prior applies to --model svg, not lab4"),
    (["--run_name", "x"], "--run_name cannot be given to from-torch: --out names the run folder"),
    (["--out_exists"], "--out {out} already exists; choose a new path (nothing was written)"),
    (["--out_under_file"], "--out {out}: {parent} is not a folder"),
    (["--out_no_parent"], "--out {out}: the folder {parent} does not exist"),
])
def test_bad_flags_and_out_folders_are_one_line(argv, message, tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": state_dict()}, ckpt)
    out = tmp_path / "run"
    if argv == ["--out_exists"]:
        out.mkdir()
    elif argv == ["--out_under_file"]:
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"
    elif argv == ["--out_no_parent"]:
        out = tmp_path / "runs" / "run"
    flags = [] if argv[0].startswith("--out_") else argv
    before = sorted(tmp_path.rglob("*"))
    code, err = exit_and_stderr(convert.main, ["from-torch", str(ckpt), "--out", str(out), *flags], capsys)
    want = message.format(ckpt=ckpt, out=out, parent=out.parent)
    assert code == 2 and err == f"cvae-jax-convert: error: {want}\n", err
    assert sorted(tmp_path.rglob("*")) == before


def test_to_torch_refusals(jax_run, written, tmp_path, capsys):
    """Not a run folder, an existing OUT, an OUT in no folder, a run the template cannot
    rebuild (other widths, an output sigmoid, SVG): one line each, nothing written."""
    def refused(run, out) -> str:
        before = sorted(tmp_path.rglob("*"))
        code, err = exit_and_stderr(convert.main, ["to-torch", str(run), str(out)], capsys)
        assert code == 2 and err.startswith("cvae-jax-convert: error: ") and err.count("\n") == 1, err
        assert sorted(tmp_path.rglob("*")) == before
        return err.removeprefix("cvae-jax-convert: error: ").strip()

    assert refused(tmp_path, tmp_path / "a.ckpt") == (f"{tmp_path / 'config.json'} not found: is {tmp_path} a "
                                                     "cvae-jax run folder (made by train.py)?")
    assert refused(jax_run, written) == f"OUT {written} already exists; choose a new path (nothing was written)"
    assert refused(jax_run, tmp_path / "no" / "a.ckpt") == f"OUT {tmp_path / 'no' / 'a.ckpt'}: the folder " \
                                                          f"{tmp_path / 'no'} does not exist"
    for name, cfg in [("small", preset("lab4").replace(F_dim=32, L_dim=16)),
                      ("sigmoid", preset("lab4").replace(output_sigmoid=True)),
                      ("scene", preset("lab4").replace(copy_scene=True)),
                      ("filled", preset("lab4").replace(copy_scene=True, scene_fill=True, scene_alpha=True)),
                      ("svg", preset("cpu", "svg"))]:
        (tmp_path / name).mkdir()
        checkpointing.save_config(tmp_path / name, cfg)
    assert refused(tmp_path / "small", tmp_path / "a.ckpt") == (
        f"{tmp_path / 'small'} has --F_dim 32 --L_dim 16: its encoder widths are (16, 32, 64, 16), the course "
        "template builds (4, 8, 16, 8) at these dims (F/8, F/4, F/2, L/2), so its Tester could not load it; "
        "only runs at F_dim 128, L_dim 32 convert")
    assert "was trained with --output_sigmoid" in refused(tmp_path / "sigmoid", tmp_path / "a.ckpt")
    convert._check_template_can_load(checkpointing.load_config(tmp_path / "sigmoid"), "run", allow_sigmoid=True)
    assert "was trained with --copy_scene, extensions" in refused(tmp_path / "scene", tmp_path / "a.ckpt")
    assert "was trained with --copy_scene, --scene_fill, --scene_alpha, extensions" in refused(
        tmp_path / "filled", tmp_path / "a.ckpt")
    assert refused(tmp_path / "svg", tmp_path / "a.ckpt") == (
        f"{tmp_path / 'svg'} is a --model svg run; the course template's checkpoint holds the Lab4 model only")


def test_without_torch_one_line_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    for argv in (["from-torch", str(tmp_path / "x.ckpt"), "--out", str(tmp_path / "run")],):
        code, err = exit_and_stderr(convert.main, argv, capsys)
        assert code == 2 and err == ("cvae-jax-convert: error: the convert commands need PyTorch: "
                                     "pip install 'cvae-jax[torch]'\n")
    assert not any(tmp_path.iterdir())


def test_console_script_and_module_entry_point():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["cvae-jax-convert"] == "cvae_jax.convert:main"
    import subprocess
    proc = subprocess.run([sys.executable, "-m", "cvae_jax.convert", "from-torch", "--help"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and "--out RUN" in proc.stdout and "--bn_mode" in proc.stdout, proc.stderr


@pytest.mark.parametrize("command", ["to-torch", "from-torch"])
def test_a_write_that_fails_midway_leaves_nothing(command, jax_run, written, tmp_path, capsys, monkeypatch):
    """A full disk halfway through the file or the run folder: one line, and neither the
    output nor its temporary remains."""
    def fail_midway(tmp, *args, **kwargs):
        if command == "to-torch":
            tmp.write_bytes(b"PK\x03\x04 half a zip")
        else:
            tmp.mkdir()
            (tmp / "config.json").write_text("{}")
        raise OSError(28, "No space left on device")

    if command == "to-torch":
        monkeypatch.setattr(torch, "save", lambda obj, f: fail_midway(pathlib.Path(f.name)))
        out, argv = tmp_path / "m.ckpt", ["to-torch", str(jax_run), str(tmp_path / "m.ckpt")]
    else:
        monkeypatch.setattr(checkpointing, "write_run", fail_midway)
        out, argv = tmp_path / "run", ["from-torch", str(written), "--out", str(tmp_path / "run")]
    code, err = exit_and_stderr(convert.main, argv, capsys)
    flag = "OUT" if command == "to-torch" else "--out"
    assert code == 2 and err == f"cvae-jax-convert: error: {flag} {out}: cannot write it (No space left on device)\n"
    assert not any(tmp_path.iterdir())
