"""Few-step grids of a VP (DDPM-schedule) epsilon model: Karras grid over the whole schedule vs the
schedule's own timestep grid (DDIM-style, diffusers' timestep_spacing="linspace").

A small MLP epsilon model is trained (seeded, on CPU) on the 2-D 8-mode ring mixture with the DDPM
schedule (beta 1e-4..0.02, 1000 steps); the exact epsilon of the same mixture is run alongside as a
control. For each model and each (solver, grid, points), PFD against the same model integrated with
Heun on 200 schedule points (the reference trajectory), 95% CI from pfd.distance.
Prints a table and writes benchmarks/results/vp_grid.json.

    python benchmarks/vp_grid.py [--n 2000] [--train-steps 4000]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from perf_suite import suite  # noqa: E402

import pfd  # noqa: E402
from pfd.adapters import VPDenoiser  # noqa: E402
from pfd.report import format_table, write_json  # noqa: E402

RESULTS = HERE / "results"
F64 = torch.float64


def ddpm_abar(t: int = 1000) -> torch.Tensor:
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, t, dtype=F64), 0)


class EpsMLP(torch.nn.Module):
    def __init__(self, width: int = 128) -> None:
        super().__init__()
        self.freqs = torch.nn.Parameter(torch.arange(1, 9, dtype=torch.float32) * math.pi, requires_grad=False)
        self.net = torch.nn.Sequential(torch.nn.Linear(2 + 16, width), torch.nn.SiLU(), torch.nn.Linear(width, width),
                                       torch.nn.SiLU(), torch.nn.Linear(width, width), torch.nn.SiLU(),
                                       torch.nn.Linear(width, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        u = (t.to(x.dtype) / 1000.0)[:, None] * self.freqs
        return self.net(torch.cat([x, u.sin(), u.cos()], 1))


def train_eps(gmm: pfd.GaussianMixture, abar: torch.Tensor, steps: int, seed: int = 0) -> EpsMLP:
    torch.manual_seed(seed)
    net = EpsMLP()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    data = gmm.sample(50_000, seed=seed).float()
    g = torch.Generator().manual_seed(seed)
    ab = abar.float()
    for _ in range(steps):
        i = torch.randint(0, data.shape[0], (1024,), generator=g)
        t = torch.randint(0, ab.numel(), (1024,), generator=g)
        eps = torch.randn(1024, 2, generator=g)
        a = ab[t][:, None]
        xt = a.sqrt() * data[i] + (1 - a).sqrt() * eps
        loss = (net(xt, t.float()) - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def exact_eps(gmm: pfd.GaussianMixture, abar: torch.Tensor):
    ls = ((1 - abar) / abar).sqrt().log()

    def eps(x_vp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        i = t.floor().long().clamp(0, ls.numel() - 2)
        w = t - i
        s = ((1 - w) * ls[i] + w * ls[i + 1]).exp()
        x = x_vp * (1 + s * s).sqrt()[:, None]
        return (x - gmm.denoiser(x, s)) / s[:, None]

    return eps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--train-steps", type=int, default=4000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    gmm = suite()["2d-8modes-wide"][0]
    abar = ddpm_abar()
    models = {"learned MLP": train_eps(gmm, abar, args.train_steps), "exact epsilon": exact_eps(gmm, abar)}
    rows = []
    for label, model in models.items():
        den = VPDenoiser(model, abar, "epsilon")
        ref = pfd.maps.CachedMap(den.ode_map(solver="heun", steps=200, grid="schedule", shape=(2,)))
        for solver in ("euler", "heun", "dpm2m"):
            for points in (4, 6, 10, 18):
                for grid in ("karras", "schedule", "loglinear"):
                    m = den.ode_map(solver=solver, steps=points, grid=grid, shape=(2,))
                    res = pfd.distance(ref, m, n=args.n, seed=1, progress=False)
                    rows.append({"model": label, "solver": solver, "points": points, "grid": grid,
                                 "nfe": m.nfe_per_sample, "pfd": res.value, "ci95": list(res.ci95)})
                    print(f"{label:14s} {solver:6s} {points:3d} {grid:9s} PFD {res.value:.4g}", flush=True)
    print(format_table(rows, ["model", "solver", "points", "grid", "nfe", "pfd"], floatfmt=".4g"))
    write_json(RESULTS / "vp_grid.json", {
        "config": {"n": args.n, "seed": 1, "train_steps": args.train_steps, "teacher": "2d-8modes-wide (perf_suite)",
                   "schedule": "DDPM linear beta 1e-4..0.02, 1000 steps", "reference": "same model, heun, 200 schedule points",
                   "grids": {"karras": "rho=7 over the schedule's sigma range", "schedule": "timesteps linspace(T-1, 0, points)",
                             "loglinear": "uniform in log sigma over the schedule's range"}},
        "rows": rows,
        "complete": True,
    })


if __name__ == "__main__":
    main()
