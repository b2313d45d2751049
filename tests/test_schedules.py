import json
import math

import numpy as np
import pytest

from cvae_jax.schedules import (
    AdaptiveTFR,
    adaptive_tfr_update,
    frange_cycle_linear,
    kl_beta,
    learning_rate,
    teacher_forcing_ratio,
)


# ---------------------------------------------------------------- frange_cycle_linear


def test_frange_single_cycle_full_ramp():
    np.testing.assert_allclose(frange_cycle_linear(5), [0.0, 0.2, 0.4, 0.6, 0.8])


def test_frange_two_cycles_half_ramp():
    # period 4, ramp over 2 steps (0, .5, 1), then held at stop.
    np.testing.assert_allclose(frange_cycle_linear(8, n_cycle=2, ratio=0.5), [0, 0.5, 1, 1, 0, 0.5, 1, 1])


def test_frange_fractional_period_later_cycle_overwrites_tail():
    # period 2.5, step 0.4: cycle 0 writes 0, .4, .8 at 0..2; cycle 1 starts at int(2.5)=2.
    np.testing.assert_allclose(frange_cycle_linear(5, n_cycle=2), [0, 0.4, 0, 0.4, 0.8])


def test_frange_start_above_stop_is_constant_stop():
    np.testing.assert_allclose(frange_cycle_linear(4, start=1.0, stop=0.5), [0.5] * 4)


# ---------------------------------------------------------------- kl_beta

GRID = [
    (n_iter, n_cycle, ratio)
    for n_iter in (1, 2, 5, 7, 10, 16, 30, 70, 101)
    for n_cycle in (1, 2, 3, 4, 7, 10, 22, 33)
    for ratio in (0.1, 0.25, 1 / 3, 0.5, 0.7, 1.0, 1.5, 3.0)
]


@pytest.mark.parametrize("start,stop", [(0.0, 1.0), (0.1, 0.7)])
def test_kl_beta_cyclical_equals_reference_on_grid(start, stop):
    # Includes fractional periods (e.g. 30/22, where 11 * period rounds to 14.999...),
    # ratio > 1 (ramps cut by the next cycle) and more cycles than iterations.
    for n_iter, n_cycle, ratio in GRID:
        ref = frange_cycle_linear(n_iter, start, stop, n_cycle, ratio)
        got = [kl_beta("Cyclical", t, n_iter, n_cycle, ratio, start, stop) for t in range(n_iter)]
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12, err_msg=f"{n_iter=} {n_cycle=} {ratio=}")


def test_kl_beta_epoch_zero_is_start():
    for kind in ("Cyclical", "Monotonic"):
        assert kl_beta(kind, 0, 70, 10, 1.0) == 0.0
        assert kl_beta(kind, 0, 70, 10, 0.5, start=0.2) == pytest.approx(0.2)


def test_kl_beta_cycle_ends_and_restarts():
    # Reference defaults: 70 epochs, 10 cycles, ratio 1 -> period 7, step 1/7.
    betas = [kl_beta("cyclical", t, 70, 10, 1.0) for t in range(70)]
    assert betas[6] == pytest.approx(6 / 7)
    assert betas[7] == 0.0 and betas[14] == 0.0 and betas[63] == 0.0
    assert betas[69] == pytest.approx(6 / 7)


def test_kl_beta_ratio_below_one_plateaus_at_stop():
    betas = [kl_beta("Cyclical", t, 20, 2, 0.5) for t in range(20)]
    np.testing.assert_allclose(betas[:10], [0, 0.2, 0.4, 0.6, 0.8, 1, 1, 1, 1, 1])
    assert betas[10] == 0.0


def test_kl_beta_beyond_n_iter_keeps_cycling():
    n_iter, n_cycle, ratio = 30, 4, 0.5  # period 7.5
    for t in range(n_iter, 3 * n_iter):
        assert kl_beta("Cyclical", t, n_iter, n_cycle, ratio) == kl_beta("Cyclical", t % n_iter, n_iter, n_cycle, ratio)


def test_kl_beta_monotonic_is_first_cycle_then_stop():
    n_iter, n_cycle, ratio = 70, 10, 0.5
    ref = frange_cycle_linear(n_iter, n_cycle=n_cycle, ratio=ratio)
    mono = [kl_beta("monotonic", t, n_iter, n_cycle, ratio) for t in range(200)]
    np.testing.assert_allclose(mono[:7], ref[:7])
    assert all(b == 1.0 for b in mono[7:])


def test_kl_beta_monotonic_with_one_cycle_equals_cyclical():
    for n_iter, ratio in [(10, 1.0), (13, 0.4), (9, 2.0)]:
        mono = [kl_beta("Monotonic", t, n_iter, 1, ratio) for t in range(n_iter)]
        np.testing.assert_allclose(mono, frange_cycle_linear(n_iter, n_cycle=1, ratio=ratio), atol=1e-12)


def test_kl_beta_none_is_constant_stop():
    assert kl_beta("None", 0, 70, 10, 1.0) == 1.0
    assert kl_beta("NONE", 123, 70, 10, 1.0, stop=0.5) == 0.5


def test_kl_beta_rejects_unknown_type_naming_the_flag():
    with pytest.raises(ValueError, match="--kl_anneal_type.*Cyclical.*Monotonic.*None"):
        kl_beta("linear", 0, 10, 1, 1.0)


def test_kl_beta_rejects_bad_arguments():
    with pytest.raises(ValueError):
        kl_beta("Cyclical", 0, 10, 1, 0.0)
    with pytest.raises(ValueError):
        kl_beta("Cyclical", -1, 10, 1, 1.0)
    with pytest.raises(ValueError):
        kl_beta("Cyclical", 0, 0, 1, 1.0)


def test_kl_beta_is_cheap_for_per_step_schedules():
    # 10 million steps: a per-call O(n_iter) implementation would take seconds here.
    assert 0.0 <= kl_beta("Cyclical", 9_999_999, 10_000_000, 10, 0.5) <= 1.0
    assert kl_beta("Cyclical", 5_000_000, 10_000_000, 10, 0.5) == 0.0


# ---------------------------------------------------------------- teacher forcing


def test_tfr_before_at_and_after_sde():
    # Decay happens at the end of epoch E-1 once the counter reaches E >= sde.
    assert teacher_forcing_ratio(0) == 1.0
    assert teacher_forcing_ratio(9) == 1.0
    assert teacher_forcing_ratio(10) == 0.9
    assert teacher_forcing_ratio(11) == 0.8
    assert teacher_forcing_ratio(17) == 0.2


def test_tfr_matches_reference_loop():
    tfr, sde, d = 1.0, 3, 0.07
    running = tfr
    for epoch in range(40):
        assert teacher_forcing_ratio(epoch, tfr, sde, d, 0.05) == pytest.approx(running, abs=1e-9)
        if epoch + 1 >= sde:  # end of epoch: counter incremented, then the update
            running = max(0.05, running - d)


def test_tfr_floor():
    assert teacher_forcing_ratio(19) == 0.0
    assert teacher_forcing_ratio(100) == 0.0
    assert teacher_forcing_ratio(100, tfr_floor=0.25) == 0.25


def test_tfr_no_float_drift():
    # 1.0 - 3 * 0.1 == 0.6999999999999999 in binary floats.
    assert teacher_forcing_ratio(12) == 0.7
    assert [teacher_forcing_ratio(e) for e in range(10, 20)] == [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]


def test_tfr_sde_zero_first_decay_after_epoch_zero():
    assert teacher_forcing_ratio(0, tfr_sde=0) == 1.0
    assert teacher_forcing_ratio(1, tfr_sde=0) == 0.9


# ---------------------------------------------------------------- adaptive teacher forcing


def test_adaptive_tfr_lowers_only_on_improvement():
    s = AdaptiveTFR(ratio=1.0)
    s = adaptive_tfr_update(s, 20.0, 0.1, 0.0)
    assert s == AdaptiveTFR(0.9, 20.0)
    assert adaptive_tfr_update(s, 19.0, 0.1, 0.0) == s
    assert adaptive_tfr_update(s, 20.0, 0.1, 0.0) == s  # ties are not improvements
    assert adaptive_tfr_update(s, float("nan"), 0.1, 0.0) == s
    s = adaptive_tfr_update(s, 21.0, 0.1, 0.0)
    assert s == AdaptiveTFR(0.8, 21.0)


def test_adaptive_tfr_floor():
    s = AdaptiveTFR(ratio=0.15, best_psnr=10.0)
    s = adaptive_tfr_update(s, 11.0, 0.1, 0.1)
    assert s.ratio == 0.1 and s.best_psnr == 11.0
    assert adaptive_tfr_update(s, 12.0, 0.1, 0.1).ratio == 0.1


def test_adaptive_tfr_dict_round_trip_through_strict_json():
    for state in (AdaptiveTFR(1.0), AdaptiveTFR(0.3, 24.5), AdaptiveTFR(0.0, math.inf)):
        text = json.dumps(state.to_dict(), allow_nan=False)
        assert AdaptiveTFR.from_dict(json.loads(text)) == state
    assert AdaptiveTFR.from_dict({"ratio": 0.5}).best_psnr == -math.inf


# ---------------------------------------------------------------- learning rate


def test_lr_multistep_matches_reference():
    lrs = [learning_rate("multistep", 1e-3, e, 0, 1) for e in range(8)]
    np.testing.assert_allclose(lrs, [1e-3, 1e-3, 1e-4, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5])


def test_lr_constant():
    assert learning_rate("Constant", 3e-4, 50, 1000, 2000) == 3e-4


def test_lr_cosine_endpoints_and_midpoint():
    assert learning_rate("cosine", 1e-3, 0, 0, 100) == pytest.approx(1e-3)
    assert learning_rate("cosine", 1e-3, 0, 50, 100) == pytest.approx(5e-4)
    assert learning_rate("cosine", 1e-3, 0, 100, 100) == pytest.approx(0.0, abs=1e-15)
    assert learning_rate("cosine", 1e-3, 0, 150, 100) == pytest.approx(0.0, abs=1e-15)


def test_lr_rejects_unknown_kind_naming_the_flag():
    with pytest.raises(ValueError, match="--lr_schedule"):
        learning_rate("step", 1e-3, 0, 0, 10)
    with pytest.raises(ValueError, match="total_steps"):
        learning_rate("cosine", 1e-3, 0, 0, 0)
