"""Adapters: each parametrisation, wrapped around an exact analytic model, reproduces the
GaussianMixture's own map; a real diffusers UNet2DModel is checked against a hand conversion and
against diffusers' own DDIM sampler; students declare their kind."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from _models import tiny_unet
from oracles import gaussian_map

import pfd
from pfd.adapters import (
    ConsistencyStudent,
    CouplingWarning,
    EDMDenoiser,
    FlowMapStudent,
    FlowMatchingDenoiser,
    GeneratorStudent,
    GridMap,
    ScoreDenoiser,
    VPDenoiser,
    diffusers_denoiser,
    vp_sigmas,
)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convolutions: one thread is ~20x faster than two


@pytest.fixture(scope="module")
def ddpm_abar():
    betas = np.linspace(1e-4, 0.02, 1000)
    return torch.tensor(np.cumprod(1.0 - betas), dtype=F64)


def _sigma_of_t(t, abar):
    """sigma at a (float) timestep: log sigma linearly interpolated between integer steps (numpy)."""
    ls = np.log(np.sqrt((1.0 - abar.numpy()) / abar.numpy()))
    return torch.tensor(np.exp(np.interp(t.detach().double().numpy(), np.arange(len(ls)), ls)), dtype=F64)


def _vp_model(gmm, abar, prediction):
    """The exact mixture written as a VP model model(x_vp, t) in the given parametrisation."""

    def model(x_vp, t):
        s = _sigma_of_t(t, abar)[:, None]
        c = 1.0 / torch.sqrt(1.0 + s * s)  # sqrt(abar)
        x = x_vp.double() / c
        d = gmm.denoiser(x, s.flatten())
        eps = (x - d) / s
        if prediction == "epsilon":
            return eps
        if prediction == "v_prediction":
            return c * eps - s * c * d  # v = sqrt(abar) eps - sqrt(1 - abar) x0
        return d

    return model


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_vp_adapter_reproduces_mixture_map(two_modes, ddpm_abar, prediction):
    den = VPDenoiser(_vp_model(two_modes, ddpm_abar, prediction), ddpm_abar, prediction)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g, dtype=F64) * 3
    s = torch.exp(torch.empty(64, dtype=F64).uniform_(math.log(0.02), math.log(80.0), generator=g))
    assert torch.allclose(den(x, s), two_modes.denoiser(x, s), atol=1e-10, rtol=1e-10)
    lo, hi = den.sigma_min, den.sigma_max
    assert hi == pytest.approx(math.sqrt((1 - float(ddpm_abar[-1])) / float(ddpm_abar[-1])))
    z = pfd.canonical_noise(256, (2,), seed=3)
    got = den.ode_map(start="ve", grid="karras", shape=(2,))(z)
    ref = pfd.DiffusionMap(two_modes.denoiser, sigma_max=hi, sigma_min=lo, shape=(2,))(z)
    assert float((got - ref).abs().max()) < 1e-9
    # start="vp": x_VE(T) = z / sqrt(abar_T), i.e. the EDM map of the rescaled noise
    got_vp = den.ode_map(grid="karras", shape=(2,))(z)
    ref_vp = pfd.DiffusionMap(two_modes.denoiser, sigma_max=hi, sigma_min=lo, shape=(2,))(z * math.sqrt(1 + hi * hi) / hi)
    assert float((got_vp - ref_vp).abs().max()) < 1e-9


def test_vp_sigma_to_t_inverts_interpolation(ddpm_abar):
    den = VPDenoiser(lambda x, t: x, ddpm_abar, "epsilon")
    t = torch.tensor([0.0, 0.5, 17.25, 500.0, 998.9, 999.0], dtype=F64)
    assert torch.allclose(den.sigma_to_t(_sigma_of_t(t, ddpm_abar)), t, atol=1e-9)
    with pytest.raises(ValueError, match="inside the schedule"):
        den(torch.zeros(2, 2, dtype=F64), 500.0)


@pytest.mark.parametrize("time,t_scale", [("noise_at_1", 1.0), ("data_at_1", 1000.0)])
def test_flow_matching_adapter_reproduces_mixture_map(mixed_full, time, t_scale):
    def velocity(xt, t):
        tn = t.double() / t_scale
        if time == "data_at_1":
            tn = 1.0 - tn
        tb = tn[:, None]
        x = xt.double() / (1.0 - tb)  # VE coordinates
        s = tb / (1.0 - tb)
        d = mixed_full.denoiser(x, s.flatten())
        v = (x - d) / s - d  # eps - x0
        return v if time == "noise_at_1" else -v

    den = FlowMatchingDenoiser(velocity, time=time, t_scale=t_scale)
    z = pfd.canonical_noise(256, (2,), seed=1)
    got = pfd.DiffusionMap(den, shape=(2,))(z)
    ref = mixed_full.ode_map()(z)
    assert float((got - ref).abs().max()) < 1e-8


@pytest.mark.parametrize("process", ["ve", "ou", "vp"])
def test_score_adapter_reproduces_mixture_map(two_modes, process):
    bmin, bmax = 0.1, 20.0

    def alpha(t):
        if process == "ou":
            return torch.exp(-t)
        return torch.exp(-0.5 * (bmin * t + 0.5 * (bmax - bmin) * t * t))

    def score(xt, t):
        t = t.double()
        if process == "ve":
            return two_modes.score(xt.double(), t)
        out = torch.empty_like(xt, dtype=F64)
        for i in range(xt.shape[0]):  # p_t = sum_k pi_k N(a mu_k, a^2 S_k + (1 - a^2) I)
            a = alpha(t[i])
            gt = pfd.GaussianMixture(two_modes.weights, a * two_modes.means, a * a * two_modes.covs)
            out[i] = gt.score(xt[i : i + 1].double(), torch.sqrt(1 - a * a).reshape(1))[0]
        return out

    den = ScoreDenoiser(score, process, beta_min=bmin, beta_max=bmax)
    s = torch.tensor([0.01, 0.3, 2.0, 40.0], dtype=F64)
    # the time of sigma solves alpha(t)^2 = 1 / (1 + sigma^2)
    if process != "ve":
        t = den.time_of_sigma(s)
        assert torch.allclose(alpha(t) ** 2, 1.0 / (1.0 + s * s), rtol=1e-12)
    z = pfd.canonical_noise(16, (2,), seed=2)
    got = pfd.DiffusionMap(den, shape=(2,), steps=8)(z)
    ref = two_modes.ode_map(steps=8)(z)
    assert float((got - ref).abs().max()) < 1e-8


def test_edm_adapter_binds_conditioning_and_round_sigma(two_modes):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones((), dtype=F64))

        def round_sigma(self, s):
            return s.round()  # integer sigmas, to see that it is applied

        def forward(self, x, sigma, class_labels=None):
            assert class_labels == "cat"
            return self.w * two_modes.denoiser(x, sigma)

    den = EDMDenoiser(Net(), class_labels="cat")
    x = torch.randn(8, 2, dtype=F64)
    assert torch.allclose(den(x, 1.6), two_modes.denoiser(x, 2.0))


# ---------------------------------------------------------------- diffusers
def _tiny_unet(prediction="epsilon"):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction)
    return diffusers, tiny_unet(), sched


def test_diffusers_unet_eps_adapter_equals_hand_conversion():
    _, unet, sched = _tiny_unet()
    den = diffusers_denoiser(unet, sched)
    abar = sched.alphas_cumprod.double()
    sig = torch.sqrt((1 - abar) / abar)

    def hand(x, sigma):  # EDM denoiser written out by hand from the conventions
        s = float(sigma[0])
        ls = sig.log().numpy()
        t = float(np.interp(math.log(s), ls, np.arange(len(ls))))
        x_vp = (x.double() / math.sqrt(1 + s * s)).float()
        with torch.no_grad():
            eps = unet(x_vp, torch.full((x.shape[0],), t)).sample.double()
        return x.double() - s * eps

    z = pfd.canonical_noise(4, (1, 8, 8), seed=0)
    lo, hi = float(sig[0]), float(sig[-1])
    got = den.ode_map(start="ve", grid="karras", steps=6, shape=(1, 8, 8))(z)
    ref = pfd.DiffusionMap(hand, sigma_max=hi, sigma_min=lo, steps=6, shape=(1, 8, 8))(z)
    assert got.abs().max() > 0.1
    assert float((got - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_diffusers_ddim_sampler_is_euler_gridmap(prediction):
    diffusers, unet, sched = _tiny_unet(prediction)
    ddim = diffusers.DDIMScheduler.from_config(sched.config, clip_sample=False, set_alpha_to_one=True)
    ddim.set_timesteps(5)
    z = pfd.canonical_noise(3, (1, 8, 8), seed=4)
    x = z.float()
    with torch.no_grad():
        for t in ddim.timesteps:
            x = ddim.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
    den = diffusers_denoiser(unet, sched, timesteps="nearest")
    grid = vp_sigmas(sched.alphas_cumprod)[ddim.timesteps.long()]
    ours = GridMap(den, grid, solver="euler", start="vp", shape=(1, 8, 8))(z)
    assert ours.abs().max() > 0.1
    assert float((ours - x.double()).abs().max()) <= 1e-4 * float(ours.abs().max())


# ---------------------------------------------------------------- students
def _gauss_jump(m, v):
    """Exact PF-ODE flow map of N(m, v I) in EDM time: m + (x - m) sqrt((v + s^2) / (v + t^2))."""
    mt = torch.tensor(m, dtype=F64)

    def jump(x, t, s):
        return mt + (x - mt) * torch.sqrt((v + s[:, None] ** 2) / (v + t[:, None] ** 2))

    return jump


def test_consistency_student_exact_gaussian():
    m, v, smax = [1.0, -0.5], 0.3, 50.0
    jump = _gauss_jump(m, v)
    cm = ConsistencyStudent(lambda x, s: jump(x, s, torch.zeros_like(s)), sigma_max=smax, shape=(2,))
    z = pfd.canonical_noise(32, (2,), seed=0)
    ref = gaussian_map(z.numpy(), m, v * np.eye(2), smax, 0.0)
    assert np.abs(cm(z).numpy() - ref).max() < 1e-12
    assert cm.kind == "trajectory" and cm.last_nfe == 1


@pytest.mark.parametrize("signature", ["x,t,s", "x,s,t", "t,s,x", "s,t,x", "meanflow"])
@pytest.mark.parametrize("grid", [[80.0, 0.0], [80.0, 2.0, 0.0], [80.0, 10.0, 1.0, 0.1, 0.0]])
def test_flow_map_student_composition_equals_direct_map(signature, grid):
    m, v = [0.5, 2.0], 0.2
    jump = _gauss_jump(m, v)
    g = {
        "x,t,s": jump,
        "x,s,t": lambda x, s, t: jump(x, t, s),
        "t,s,x": lambda t, s, x: jump(x, t, s),
        "s,t,x": lambda s, t, x: jump(x, t, s),
        "meanflow": lambda x, r, t: (x - jump(x, t, r)) / (t - r)[:, None],  # u(z, r, t)
    }[signature]
    fm = FlowMapStudent(g, grid, signature=signature, shape=(2,))
    z = pfd.canonical_noise(16, (2,), seed=1)
    ref = gaussian_map(z.numpy(), m, v * np.eye(2), 80.0, 0.0)
    assert np.abs(fm(z).numpy() - ref).max() < 1e-10
    assert fm.last_nfe == len(grid) - 1


def test_flow_map_student_on_mixture_reproduces_teacher(two_modes):
    """Segments computed by a fine RK4 integration of the mixture's ODE; K = 3 composed."""
    from pfd.schedules import loglinear_sigmas
    from pfd.solvers import SOLVERS

    def denoise(x, s):
        return two_modes.denoiser(x, s)

    def jump(x, t, s):
        t0, s0 = float(t[0]), float(s[0])
        lo = max(s0, 0.002)
        y = SOLVERS["rk4"].integrate(denoise, x.double(), loglinear_sigmas(200, lo, t0))
        return denoise(y, lo) if s0 == 0.0 else y

    fm = FlowMapStudent(jump, [80.0, 3.0, 0.3, 0.0], shape=(2,))
    z = pfd.canonical_noise(64, (2,), seed=5)
    ref = two_modes.ode_map(solver="dopri5", rtol=1e-10, atol=1e-10)(z)
    assert float((fm(z) - ref).abs().max()) < 1e-6


def test_progressive_student_on_own_grid_is_euler(two_modes):
    grid = [80.0, 8.0, 1.0, 0.1]
    m = GridMap(two_modes.denoiser, grid, solver="euler", shape=(2,))
    z = pfd.canonical_noise(8, (2,), seed=0)
    x = 80.0 * z
    for s0, s1 in itertools.pairwise(grid):  # DDIM update written out
        x = two_modes.denoiser(x, s0) + (s1 / s0) * (x - two_modes.denoiser(x, s0))
    x = two_modes.denoiser(x, 0.1)
    assert torch.allclose(m(z), x, atol=1e-12)
    assert m.last_nfe == 4 and m.describe()["sigmas"] == grid
    one = GridMap(two_modes.denoiser, [80.0], shape=(2,))
    assert torch.allclose(one(z), two_modes.denoiser(80.0 * z, 80.0)) and one.last_nfe == 1


def test_generator_student_kind_and_coupling_warning():
    with pytest.raises(TypeError):
        GeneratorStudent(lambda z: z)  # kind is required, never guessed
    with pytest.raises(ValueError, match="kind must be declared"):
        GeneratorStudent(lambda z: z, kind="one-step")
    traj = GeneratorStudent(lambda z: 2 * z, kind="trajectory", shape=(2,))
    dist = GeneratorStudent(lambda z: -z, kind="distribution", shape=(2,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res_t = pfd.distance(traj, traj, n=64, progress=False)
    with pytest.warns(CouplingWarning, match="RatioCorrectedMap"):
        res = pfd.distance(pfd.OneStepMap(lambda z: z, shape=(2,)), dist, n=256, progress=False)
    # -z has the same law as z, yet the raw-map PFD is 2 * RMS ||z|| = 2 sqrt(2): the coupling
    assert res.value == pytest.approx(2 * math.sqrt(2), rel=0.1)
    assert res_t.value == 0.0
    assert res.provenance["b"]["kind"] == "distribution"
    quiet = GeneratorStudent(lambda z: -z, kind="distribution", warn=False, shape=(2,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet(torch.zeros(2, 2))


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: VPDenoiser(lambda x, t: x, [0.9, 0.5], "eps"), "prediction must be one of"),
        (lambda: VPDenoiser(lambda x, t: x, [0.5, 0.9], "epsilon"), "strictly decreasing"),
        (lambda: VPDenoiser(lambda x, t: x, [1.0, 0.5], "epsilon"), "inside"),
        (lambda: VPDenoiser(lambda x, t: x, [0.9, 0.5], "epsilon", timesteps="floor"), "timesteps must be"),
        (lambda: FlowMatchingDenoiser(lambda x, t: x, time="reversed"), "time must be"),
        (lambda: FlowMatchingDenoiser(lambda x, t: x, t_scale=0.0), "t_scale"),
        (lambda: ScoreDenoiser(lambda x, t: x, "subvp"), "process must be"),
        (lambda: ScoreDenoiser(lambda x, t: x, "vp", beta_min=5.0, beta_max=1.0), "beta_max must be"),
        (lambda: GridMap(lambda x, s: x, [1.0, 2.0]), "strictly decreasing"),
        (lambda: GridMap(lambda x, s: x, [2.0, -1.0]), "> 0"),
        (lambda: GridMap(lambda x, s: x, [2.0, 0.0, 0.0]), "> 0"),
        (lambda: GridMap(lambda x, s: x, [2.0, 1.0], solver="dopri5"), "built-in"),
        (lambda: GridMap(lambda x, s: x, [2.0, 1.0], start="pv"), "start must be"),
        (lambda: FlowMapStudent(lambda x, t, s: x, [1.0, 0.0], signature="x,t"), "signature"),
        (lambda: FlowMapStudent(lambda x, t, s: x, [1.0]), "at least 2"),
        (lambda: FlowMapStudent(lambda x, t, s: x, [0.0, 1.0]), "decreasing"),
        (lambda: ConsistencyStudent(lambda x, s: x, sigma_max=-1.0), "sigma_max"),
        (lambda: ConsistencyStudent(lambda x, s: x, kind="both"), "kind"),
    ],
)
def test_bad_arguments_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_callables_raise_type_error():
    for build in (lambda: VPDenoiser(3, [0.9, 0.5], "epsilon"), lambda: FlowMatchingDenoiser(None),
                  lambda: ScoreDenoiser("s", "ve"), lambda: EDMDenoiser(1.0), lambda: ConsistencyStudent(2),
                  lambda: FlowMapStudent(None, [1.0, 0.0]), lambda: diffusers_denoiser(torch.nn.Identity(), object())):
        with pytest.raises(TypeError):
            build()
    den = VPDenoiser(lambda x, t: "nope", [0.9, 0.5], "epsilon")
    with pytest.raises(TypeError, match="must return a tensor"):
        den(torch.zeros(1, 2, dtype=F64), 1.0)
