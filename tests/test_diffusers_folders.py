"""diffusers folders saved with save_pretrained, scored with no user code: tiny UNet2DModel pipelines
(DDPM epsilon, DDIM v-prediction, consistency model) and model + scheduler folders (flow matching,
EDM), checked against diffusers' own schedulers stepping the same model."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from _models import tiny_unet

import pfd
from pfd.maps import describe_map
from pfd.spec import load_map

diffusers = pytest.importorskip("diffusers")
SHAPE = (1, 8, 8)

pytestmark = pytest.mark.usefixtures("one_thread")


def _unet(seed: int = 0):
    return tiny_unet(seed)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers")
    out = {}
    unet = _unet()
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000)).save_pretrained(
        root / "ddpm")
    out["ddpm"] = root / "ddpm"
    ddim = diffusers.DDIMScheduler(num_train_timesteps=1000, prediction_type="v_prediction", beta_schedule="scaled_linear",
                                   beta_start=0.00085, beta_end=0.012)
    diffusers.DDIMPipeline(unet=_unet(1), scheduler=ddim).save_pretrained(root / "ddim-v")
    out["ddim-v"] = root / "ddim-v"
    cm = diffusers.CMStochasticIterativeScheduler(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0,
                                                  clip_denoised=False)
    diffusers.ConsistencyModelPipeline(unet=_unet(2), scheduler=cm).save_pretrained(root / "cm")
    out["cm"] = root / "cm"
    _unet(3).save_pretrained(root / "fm-unet")
    diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000).save_pretrained(root / "fm-scheduler")
    out["fm"] = (root / "fm-unet", root / "fm-scheduler")
    _unet(4).save_pretrained(root / "edm-unet")
    diffusers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5).save_pretrained(root / "edm-scheduler")
    out["edm"] = (root / "edm-unet", root / "edm-scheduler")
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _step_all(sched, unet, z, steps, scale_input=False):
    """diffusers' own sampling loop: init_noise_sigma, (scale_model_input,) model, step."""
    sched.set_timesteps(steps)
    x = z.float() * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(sched.scale_model_input(x, t) if scale_input else x, t).sample, t, x).prev_sample
    return x.double()


@pytest.mark.parametrize("name, steps", [("ddpm", 4), ("ddim-v", 10)])  # (T - 1) / (steps - 1) integer: the
# timestep grids of diffusers' Euler (linear in t, unrounded) and pfd (rounded, as DDIM) then coincide
def test_pipeline_folder_equals_diffusers_samplers(folders, name, steps):
    # the adapter (prediction type, alpha-bar schedule) and the sample shape come from the folder
    m = load_map(str(folders[name]), solver="euler", steps=steps, schedule={"start": "ve"})
    src = describe_map(m)["source"]
    assert m.shape == SHAPE and src["adapter"] == ("eps" if name == "ddpm" else "v")
    assert src["pipeline"] == ("DDPMPipeline" if name == "ddpm" else "DDIMPipeline") and src["model"] == "UNet2DModel"
    assert "clip_sample" in src["not_applied"]
    pipe = getattr(diffusers, src["pipeline"]).from_pretrained(str(folders[name]), local_files_only=True)
    cfg = pipe.scheduler.config
    z = pfd.canonical_noise(3, SHAPE, seed=4)
    # pfd's default VP grid with Euler (start sigma_max z) is diffusers' Euler with timestep_spacing="linspace"
    euler = diffusers.EulerDiscreteScheduler.from_config(cfg, timestep_spacing="linspace")
    ours = m(z)
    assert m.last_nfe == steps and ours.abs().max() > 0.1
    assert _rel(ours, _step_all(euler, pipe.unet, z, steps, scale_input=True)) < 2e-5
    # DDIM (eta = 0, no clipping, final alpha 1) is pfd's Euler on DDIM's timesteps from x_T = z ("ddim" is euler)
    ddim = diffusers.DDIMScheduler.from_config(cfg, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)
    theirs = _step_all(ddim, pipe.unet, z, steps)
    grid = pfd.adapters.vp_sigmas(pipe.scheduler.alphas_cumprod)[ddim.timesteps.long()]
    assert _rel(pfd.adapters.GridMap(m.denoiser, grid, solver="ddim", start="vp", shape=SHAPE)(z), theirs) < 2e-5
    # DPM-Solver++(2M) (midpoint) is dpmpp_2m on the scheduler's own sigmas, which end in 0
    dpm = diffusers.DPMSolverMultistepScheduler.from_config(cfg, final_sigmas_type="zero")
    theirs = _step_all(dpm, pipe.unet, z, steps)
    grid = [float(v) for v in dpm.sigmas]
    assert grid[-1] == 0.0
    assert _rel(pfd.adapters.GridMap(m.denoiser, grid, solver="dpmpp_2m", start="vp", shape=SHAPE)(z), theirs) < 2e-5


def test_consistency_pipeline_is_a_one_step_student(folders):
    m = load_map(str(folders["cm"]))
    assert isinstance(m, pfd.adapters.ConsistencyStudent) and describe_map(m)["source"]["adapter"] == "consistency"
    pipe = diffusers.ConsistencyModelPipeline.from_pretrained(str(folders["cm"]), local_files_only=True)
    sched = pipe.scheduler
    sched.set_timesteps(1)
    z = pfd.canonical_noise(3, SHAPE, seed=1)
    x = z.float() * sched.init_noise_sigma  # the pipeline's own loop: scale, call, step
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(pipe.unet(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
    ours = m(z)
    assert m.last_nfe == 1 and ours.abs().max() > 0.1
    assert _rel(ours, x.double()) < 1e-5
    with pytest.raises(ValueError, match="one step from sigma_max"):
        load_map(str(folders["cm"]), schedule={"grid": "karras"})


def test_flow_matching_model_and_scheduler_folders_equal_diffusers_euler(folders):
    unet_dir, sched_dir = folders["fm"]
    t_grid = [0.9, 0.6, 0.3, 0.1]  # flow time; EDM sigma = t / (1 - t), start x_t = z
    m = load_map(str(unet_dir), args={"scheduler": str(sched_dir)}, solver="euler")
    assert describe_map(m)["source"]["adapter"] == "velocity" and m.start == "fm"
    den = m.denoiser
    grid = pfd.adapters.GridMap(den, [t / (1 - t) for t in t_grid] + [0.0], solver="euler", start="fm", shape=SHAPE)
    sched = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(str(sched_dir))
    sched.set_timesteps(sigmas=t_grid)
    z = pfd.canonical_noise(3, SHAPE, seed=2)
    x = z.float()
    unet = den.model
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
    ours = grid(z)
    assert grid.last_nfe == 4 and ours.abs().max() > 0.1
    assert _rel(ours, x.double()) < 2e-5


def test_edm_scheduler_folder_uses_its_preconditioning(folders):
    unet_dir, sched_dir = folders["edm"]
    m = load_map(str(unet_dir), args={"scheduler": str(sched_dir)}, steps=4)
    assert isinstance(m, pfd.DiffusionMap) and describe_map(m)["source"]["adapter"] == "denoiser"
    unet = m.denoiser.model
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    s = torch.tensor([0.3, 7.0])
    sb = s.reshape(-1, 1, 1, 1)
    with torch.no_grad():  # EDM (Karras et al. 2022, table 1) preconditioning, epsilon output, sigma_data = 0.5
        f = unet(x / torch.sqrt(sb**2 + 0.25), 0.25 * s.log()).sample
        hand = 0.25 / (sb**2 + 0.25) * x + sb * 0.5 / torch.sqrt(sb**2 + 0.25) * f
        got = m.denoiser(x, s)
    assert float((got - hand).abs().max()) < 1e-5 * float(hand.abs().max())
    with pytest.warns(UserWarning, match=r"leaves the noise range \[0.002, 80\] .* was trained on"):
        load_map(str(unet_dir), args={"scheduler": str(sched_dir)}, schedule={"sigma_max": 200.0})


def test_score_cli_scores_a_pipeline_folder_with_per_model_steps(folders, capsys):
    from pfd.cli import main

    folder = str(folders["ddpm"])
    rc = main(["score", "--reference", folder, "--student", folder, "--student-solver", "ddim", "--student-steps", "4",
               "--reference-steps", "8", "--n", "16", "--json", "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    ref = load_map(folder, steps=8)
    stu = load_map(folder, solver="euler", steps=4)
    expect = pfd.distance(ref, stu, n=16, progress=False)
    assert out["value"] == pytest.approx(expect.value, rel=1e-12)
    assert out["reference"]["type"] == "eps" and out["student"]["solver"] == "ddim" and out["student"]["steps"] == 4
    assert out["reference"]["map"]["source"]["scheduler"] == "DDPMScheduler"
    assert out["nfe"] == {"reference": 15, "student": 4}


@pytest.mark.parametrize("setup, match", [
    ("empty", "not a diffusers folder"),
    ("model-only", "also name its scheduler folder"),
    ("conditional", "unconditional pipelines"),
    ("wrong-type", "makes this a 'eps' model, not 'velocity'"),
    ("bad-key", "do not apply to a diffusers folder"),
])
def test_folder_errors_are_clear(folders, tmp_path, setup, match):
    folder, kw = tmp_path, {}
    if setup == "model-only":
        folder = folders["ddpm"] / "unet"
    elif setup == "conditional":
        (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                               "unet": ["diffusers", "UNet2DConditionModel"],
                                                               "vae": ["diffusers", "AutoencoderKL"],
                                                               "scheduler": ["diffusers", "PNDMScheduler"]}))
    elif setup == "wrong-type":
        folder, kw = folders["ddpm"], {"adapter": "velocity"}
    elif setup == "bad-key":
        folder, kw = folders["ddpm"], {"schedule": {"beta_end": 0.02}}
    with pytest.raises(ValueError, match=match) as info:
        load_map(str(folder), label="--student", **kw)
    assert str(info.value).startswith("--student")


def test_vp_default_grid_lies_inside_the_schedule_and_out_of_range_is_rejected_at_construction():
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    den = pfd.adapters.VPDenoiser(lambda x, t: torch.zeros_like(x), abar, "epsilon")
    sig = pfd.adapters.vp_sigmas(abar)
    g = den.ode_map(steps=4, shape=(2,))
    assert g.sigmas.tolist() == pytest.approx([float(sig[999]), float(sig[666]), float(sig[333]), float(sig[0])])
    assert den.ode_map(solver="dpm2m", steps=5).sigmas[2] == pytest.approx(math.sqrt(float(sig[0] * sig[999])))
    with pytest.raises(ValueError, match=r"sigma range \[0.002, 80\] leaves the range \[0.01, 157.4\]"):
        pfd.DiffusionMap(den)
    with pytest.raises(ValueError, match="leaves the range"):
        pfd.adapters.GridMap(den, [80.0, 1.0, 0.005])
    # a VP score model can be evaluated beyond t = 1 (sigma 152 for beta 0.1..20) but was not trained there
    score = pfd.adapters.ScoreDenoiser(lambda x, t: -x, "vp")
    with pytest.warns(UserWarning, match=r"trained on"):
        pfd.DiffusionMap(score, sigma_max=200.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pfd.DiffusionMap(score, sigma_max=150.0)  # inside the trained range: no warning
