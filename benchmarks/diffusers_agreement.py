"""Agreement of pfd's maps with diffusers' own schedulers stepping the same model loaded from a folder.

A tiny UNet2DModel (seeded, 1x8x8) is saved as a DDPMPipeline (epsilon) and loaded by pfd from the folder
(pfd.spec.load_map); each diffusers scheduler is run on the same noise with its own step(), and the
relative max difference max|x_pfd - x_diffusers| / max|x_diffusers| is reported (float32 model; pfd
keeps a float64 state). Also the ConsistencyModelPipeline one-step map and the midpoint vs Heun warm-up
of diffusers' third-order DPM-Solver++.

    python benchmarks/diffusers_agreement.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

import pfd  # noqa: E402
from pfd.adapters import GridMap  # noqa: E402
from pfd.report import format_table, write_json  # noqa: E402
from pfd.spec import load_map  # noqa: E402

RESULTS = HERE / "results"
SHAPE = (1, 8, 8)


def tiny_unet(diffusers, seed: int):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()


def run_scheduler(sched, unet, z: torch.Tensor, steps: int, scale_input: bool = False) -> torch.Tensor:
    sched.set_timesteps(steps)
    x = z.float() * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            xin = sched.scale_model_input(x, t) if scale_input else x
            x = sched.step(unet(xin, t).sample, t, x).prev_sample
    return x.double()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    import diffusers

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp())
    diffusers.DDPMPipeline(unet=tiny_unet(diffusers, 0), scheduler=diffusers.DDPMScheduler()).save_pretrained(root / "ddpm")
    folder = str(root / "ddpm")
    cfg = diffusers.DDPMScheduler.from_pretrained(folder, subfolder="scheduler").config
    unet = diffusers.UNet2DModel.from_pretrained(folder, subfolder="unet").eval()
    z = pfd.canonical_noise(8, SHAPE, seed=0)
    steps = 10
    rows = []

    def add(peer: str, pfd_side: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
        rows.append({"diffusers": peer, "pfd": pfd_side, "steps": steps, "rel_max_diff": rel(ours, theirs)})
        print(f"{peer:70s} {pfd_side:55s} {rows[-1]['rel_max_diff']:.2e}", flush=True)

    base = load_map(folder, steps=steps)
    den = base.denoiser
    sig = pfd.adapters.vp_sigmas(diffusers.DDPMScheduler.from_config(cfg).alphas_cumprod)
    ddim = diffusers.DDIMScheduler.from_config(cfg, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)
    ddim.set_timesteps(steps)
    add("DDIMScheduler(trailing, eta=0, no clipping)", "GridMap(euler, its timesteps, start=vp)",
        GridMap(den, sig[ddim.timesteps.long()], solver="ddim", start="vp", shape=SHAPE)(z), run_scheduler(ddim, unet, z, steps))
    euler = diffusers.EulerDiscreteScheduler.from_config(cfg, timestep_spacing="linspace")
    add("EulerDiscreteScheduler(linspace)", "load_map(folder, solver=euler, start=ve) [pfd's default grid]",
        load_map(folder, solver="euler", steps=steps, schedule={"start": "ve"})(z),
        run_scheduler(euler, unet, z, steps, scale_input=True))

    def own_grid(sched) -> list[float]:  # the scheduler's sigmas (EDM), duplicates of Heun's stages removed
        out: list[float] = []
        for v in sched.sigmas.double().tolist():
            if not out or v < out[-1]:
                out.append(v)
        return out

    heun = diffusers.HeunDiscreteScheduler.from_config(cfg, timestep_spacing="linspace", clip_sample=False)
    theirs = run_scheduler(heun, unet, z, steps, scale_input=True)
    add("HeunDiscreteScheduler(linspace, no clipping)", "GridMap(heun, its sigmas, start=ve)",
        GridMap(den, own_grid(heun), solver="heun", start="ve", shape=SHAPE)(z), theirs)
    configs = [(2, "midpoint", "dpmpp_2m"), (2, "heun", "dpmpp_2m_heun"), (3, "heun", "dpmpp_3m"), (3, "midpoint", "dpmpp_3m")]
    for order, solver_type, name in configs:
        dpm = diffusers.DPMSolverMultistepScheduler.from_config(cfg, solver_order=order, solver_type=solver_type,
                                                                final_sigmas_type="zero", lower_order_final=False)
        theirs = run_scheduler(dpm, unet, z, steps)
        add(f"DPMSolverMultistepScheduler(order {order}, {solver_type}, final zero)",
            f"GridMap({name}, its sigmas, start=vp)",
            GridMap(den, own_grid(dpm), solver=name, start="vp", shape=SHAPE)(z), theirs)
    unipc = diffusers.UniPCMultistepScheduler.from_config(cfg, final_sigmas_type="zero")
    theirs = run_scheduler(unipc, unet, z, steps)
    add("UniPCMultistepScheduler(bh2, order 2, final zero; differs by design)", "GridMap(unipc3, its sigmas, start=vp)",
        GridMap(den, own_grid(unipc), solver="unipc3", start="vp", shape=SHAPE)(z), theirs)
    cm = diffusers.CMStochasticIterativeScheduler(clip_denoised=True)
    diffusers.ConsistencyModelPipeline(unet=tiny_unet(diffusers, 1), scheduler=cm).save_pretrained(root / "cm")
    cmu = diffusers.UNet2DModel.from_pretrained(str(root / "cm"), subfolder="unet").eval()
    steps = 1
    add("ConsistencyModelPipeline loop, 1 step (clip_denoised)", "load_map(cm folder) -> ConsistencyStudent",
        load_map(str(root / "cm"))(z), run_scheduler(diffusers.CMStochasticIterativeScheduler.from_pretrained(
            str(root / "cm"), subfolder="scheduler"), cmu, z, 1, scale_input=True))
    print(format_table(rows, ["diffusers", "pfd", "steps", "rel_max_diff"], floatfmt=".2e"))
    write_json(RESULTS / "diffusers_agreement.json", {
        "config": {"model": "UNet2DModel 1x8x8, block_out_channels (8, 16), seed 0 (random weights)",
                   "scheduler": "DDPMScheduler defaults (linear beta 1e-4..0.02, 1000 steps, epsilon)", "n": 8,
                   "diffusers": diffusers.__version__, "torch": torch.__version__},
        "rows": rows, "complete": True})


if __name__ == "__main__":
    main()
