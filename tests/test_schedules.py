"""Processes (OU / VP / VE), conversions and K-segment time grids: closed forms and inverses."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pfd.schedules import (
    Process,
    check_time_range,
    get_process,
    karras_sigmas,
    loglinear_sigmas,
    time_grid,
)

PROCS = ["ou", "vp", "ve"]


def test_existing_grids_unchanged():
    s = karras_sigmas(5, 0.01, 10.0, 7.0)
    i = np.arange(5) / 4
    ref = (10.0 ** (1 / 7) + i * (0.01 ** (1 / 7) - 10.0 ** (1 / 7))) ** 7
    np.testing.assert_allclose(s.numpy(), ref, rtol=1e-14)
    np.testing.assert_allclose(loglinear_sigmas(3, 0.01, 1.0).numpy(), [1.0, 0.1, 0.01], rtol=1e-14)


def test_ou_closed_forms():
    ou = get_process("ou")
    t = np.array([1e-4, 0.3, 2.0, 7.0])
    np.testing.assert_allclose(ou.alpha(t), np.exp(-t), rtol=1e-15)
    np.testing.assert_allclose(ou.sigma(t) ** 2, 1 - np.exp(-2 * t), rtol=1e-13)
    np.testing.assert_allclose(ou.inv_snr(t), np.exp(2 * t) - 1, rtol=1e-11)  # (reference loses digits at small t)
    # the relation used throughout: x_OU = alpha_t x_VE at sigma_VE = sqrt(e^{2t} - 1)
    np.testing.assert_allclose(ou.sigma_ve(t), np.sqrt(np.exp(2 * t) - 1), rtol=1e-11)
    assert ou.f(0.5) == -1.0 and abs(ou.g2(0.5) - 2.0) < 1e-14


def test_vp_and_ve_closed_forms():
    vp = Process("vp", beta_min=0.1, beta_max=20.0)
    t = 0.4
    B = 0.1 * t + 0.5 * 19.9 * t * t
    assert abs(vp.alpha(t) - math.exp(-0.5 * B)) < 1e-15
    assert abs(vp.alpha(t) ** 2 + vp.sigma(t) ** 2 - 1) < 1e-14
    ve = get_process("edm")
    assert ve.kind == "ve" and ve.alpha(3.0) == 1.0 and ve.sigma(3.0) == 3.0 and ve.inv_snr(3.0) == 9.0


@pytest.mark.parametrize("name", PROCS)
def test_derivatives_against_finite_differences(name):
    p = get_process(name)
    for t in (0.05, 0.5, 0.9):
        h = 1e-6 * t
        drho_fd = (p.inv_snr(t + h) - p.inv_snr(t - h)) / (2 * h)
        f_fd = (math.log(p.alpha(t + h)) - math.log(p.alpha(t - h))) / (2 * h)
        assert abs(p.dinv_snr(t) - drho_fd) <= 1e-7 * abs(drho_fd)
        assert abs(p.f(t) - f_fd) <= 1e-7 * max(1.0, abs(f_fd))
        assert abs(p.g2(t) - p.alpha(t) ** 2 * p.dinv_snr(t)) < 1e-12 * p.g2(t)


@settings(max_examples=40, deadline=None)
@given(t=st.floats(1e-4, 0.99), name=st.sampled_from(PROCS))
def test_conversions_round_trip(t, name):
    p = get_process(name)
    assert abs(p.t_from_sigma_ve(p.sigma_ve(t)) - t) <= 1e-10 * max(t, 1e-2)
    assert abs(p.t_from_log_snr(p.log_snr(t)) - t) <= 1e-10 * max(t, 1e-2)
    assert abs(p.t_from_inv_snr(p.inv_snr(t)) - t) <= 1e-10 * max(t, 1e-2)
    assert abs(p.sigma(t) ** 2 / p.alpha(t) ** 2 - p.inv_snr(t)) <= 1e-12 * max(1.0, p.inv_snr(t))


@pytest.mark.parametrize("name", PROCS)
def test_time_grids(name):
    p = get_process(name)
    lo, hi, K = 0.01, 0.9, 6
    for kind in ("uniform", "logsnr", "edm"):
        g = time_grid(K, lo, hi, kind, name)
        assert g.dtype == torch.float64 and g.shape == (K + 1,)
        assert float(g[0]) == hi and float(g[-1]) == lo and bool((g[1:] < g[:-1]).all())
    g = time_grid(K, lo, hi, "uniform", name).numpy()
    np.testing.assert_allclose(np.diff(g), -(hi - lo) / K, rtol=1e-12)
    lam = p.log_snr(time_grid(K, lo, hi, "logsnr", name).numpy())
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-9)
    s = p.sigma_ve(time_grid(K, lo, hi, "edm", name, rho=7.0).numpy()) ** (1 / 7)
    np.testing.assert_allclose(np.diff(s), np.diff(s)[0], rtol=1e-9)


def test_bad_input():
    with pytest.raises(ValueError, match="process must be one of"):
        get_process("cosine")
    with pytest.raises(TypeError, match="process"):
        get_process(3)
    with pytest.raises(ValueError, match="t_min must be < t_max"):
        check_time_range(1.0, 0.5)
    with pytest.raises(ValueError, match="kind must be one of"):
        time_grid(4, 0.1, 1.0, "cosine")
    with pytest.raises(ValueError, match="K must be >= 1"):
        time_grid(0, 0.1, 1.0)
    with pytest.raises(TypeError, match="K must be an int"):
        time_grid(2.5, 0.1, 1.0)
    with pytest.raises(ValueError, match="t must be >= 0"):
        get_process("ou").alpha(-1.0)
    with pytest.raises(ValueError, match="finite"):
        get_process("ou").inv_snr(float("nan"))
    with pytest.raises(ValueError, match="log_snr needs t > 0"):
        get_process("ve").log_snr(0.0)
