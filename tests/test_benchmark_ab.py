"""benchmarks/ab.py reads its variants as typed Config changes and rejects bad ones by name
(the timing itself is measured by hand: a run compiles one training step per variant)."""

from __future__ import annotations

import pytest

from benchmarks import ab


def test_variants_become_typed_config_changes():
    changes = ab.parse_variant("batched_wgrad=false, scan_unroll=4,conv_impl=xla,lr=2e-3,remat=True")
    assert changes == {"batched_wgrad": False, "scan_unroll": 4, "conv_impl": "xla", "lr": 2e-3,
                       "remat": True}
    assert type(changes["scan_unroll"]) is int and type(changes["lr"]) is float
    assert ab.parse_variant("") == {}
    assert ab.parse_variant("run_name=None") == {"run_name": None}
    # XLA compiler options pass through as text, beside Config fields
    assert ab.parse_variant("xla_backend_optimization_level=1,remat=false") == {
        "xla_backend_optimization_level": "1", "remat": False}
    cfg = ab.base_config("lab4", "cpu", None, None).replace(**ab.parse_variant("tf_fast_path=0"))
    assert cfg.tf_fast_path is False and (cfg.batch_size, cfg.train_vi_len, cfg.frame_H) == (2, 16, 32)


@pytest.mark.parametrize("text,needle", [
    ("no_such_field=1", "no field 'no_such_field'"),
    ("remat=maybe", "remat takes true or false"),
    ("scan_unroll=four", "scan_unroll takes int values"),
    ("remat", "expected field=value"),
])
def test_bad_variants_are_named(text, needle):
    with pytest.raises(ValueError, match=needle) as err:
        ab.parse_variant(text)
    assert repr(text) in str(err.value)


def test_the_command_line_refuses_repeated_and_bad_variants(capsys):
    for argv in (["--variant", "remat=true", "--variant", "remat=true"], ["--variant", "remat=maybe"]):
        with pytest.raises(SystemExit):
            ab.main(argv)
    assert "remat takes true or false" in capsys.readouterr().err
