"""The default job: an analytic 2-D Gaussian-mixture teacher scored against real students.

Students (all evaluated on the same canonical noise as the teacher):

* the teacher's own mixture under the paper's sampler (Heun, 18 grid points, 35 NFE) and under
  cheap samplers: the discretisation error of each setting;
* a slightly wrong mixture (means 5% further out, covariances 20% wider);
* memorizing models: the empirical distribution of N training points drawn from the teacher,
  for several N (their PFD to the teacher falls as N grows);
* a one-step student: an MLP distilled by regression onto the teacher's noise-to-data pairs
  (trained here in a few seconds, on noise disjoint from the evaluation noise).

The teacher's map is a tight-tolerance dopri5 solve (the reference), computed once and cached.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from pfd.analytic.gmm import GaussianMixture
from pfd.analytic.teachers import hexagon_teacher
from pfd.estimator import distance, versions
from pfd.maps import CachedMap, OneStepMap
from pfd.noise import canonical_noise, derive_seed

__all__ = ["run_demo", "train_one_step_student"]

REFERENCE = {"solver": "dopri5", "rtol": 1e-8, "atol": 1e-8}


def _perturbed(gmm: GaussianMixture) -> GaussianMixture:
    return GaussianMixture(gmm.weights, 1.05 * gmm.means, 1.2 * gmm.component_covs())


def train_one_step_student(
    teacher_map, dim: int, *, n_pairs: int = 8192, steps: int = 1500, width: int = 128, seed: int = 1
) -> torch.nn.Module:
    """Distil a one-step MLP G(z) ~ teacher(z) by regression on teacher pairs (CPU, seconds).

    The training noise is canonical noise of seed ``seed`` (evaluation uses seed 0 by default).
    """
    z = canonical_noise(n_pairs, (dim,), seed=seed)
    with torch.no_grad():
        y = teacher_map(z)
    gen = torch.Generator().manual_seed(derive_seed(seed, 77))
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(seed, 78) % (2**63))
        net = torch.nn.Sequential(
            torch.nn.Linear(dim, width), torch.nn.SiLU(),
            torch.nn.Linear(width, width), torch.nn.SiLU(),
            torch.nn.Linear(width, width), torch.nn.SiLU(),
            torch.nn.Linear(width, dim),
        )
    zf, yf = z.float(), y.float()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(0, n_pairs, (512,), generator=gen)
        loss = (net(zf[idx]) - yf[idx]).pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def run_demo(n: int = 4096, seed: int = 0, batch_size: int = 1024, progress: bool = True,
             train_steps: int = 1500) -> dict[str, Any]:
    """Run the default job and return a JSON-serialisable report (rows of PFD results)."""
    gmm = hexagon_teacher()
    teacher = CachedMap(gmm.ode_map(**REFERENCE, name="teacher GMM (reference)"))
    rows: list[dict[str, Any]] = []

    def score(label: str, student, setting: str, extra: dict[str, Any] | None = None) -> None:
        t0 = time.perf_counter()
        res = distance(teacher, student, n=n, seed=seed, batch_size=batch_size, progress=progress)
        row = {
            "student": label,
            "setting": setting,
            "pfd": res.value,
            "stderr": res.stderr,
            "ci95": list(res.ci95),
            "nfe": res.nfe[1],
            "seconds": time.perf_counter() - t0,
            "result": res.to_dict(),
        }
        row.update(extra or {})
        rows.append(row)

    # the teacher's own map under practical samplers: pure discretisation error
    for solver, steps in (("heun", 18), ("unipc3", 35), ("heun", 8), ("euler", 18)):
        score(f"teacher, {solver}/{steps}", gmm.ode_map(solver=solver, steps=steps), f"{solver}, {steps} grid pts")
    # a slightly wrong distribution, solved as accurately as the teacher
    score("wrong mixture (+5% means, +20% covs)", _perturbed(gmm).ode_map(**REFERENCE), "dopri5 reference")
    # memorizing models of N training points drawn from the teacher
    for n_train in (16, 256, 4096):
        emp = GaussianMixture.empirical(gmm.sample(n_train, seed=derive_seed(seed, 5, n_train) % (2**31)))
        score(f"memorizing, N={n_train}", emp.ode_map(), "heun, 18 grid pts", {"n_train": n_train})
    # a one-step distilled student
    t0 = time.perf_counter()
    net = train_one_step_student(teacher, gmm.dim, steps=train_steps, seed=seed + 1)
    train_s = time.perf_counter() - t0
    score("one-step MLP (regression distilled)", OneStepMap(net, shape=gmm.event_shape, name="mlp"),
          "1 step", {"train_seconds": train_s})
    return {
        "teacher": {"mixture": gmm.to_dict(), "map": teacher.describe()},
        "n": n,
        "seed": seed,
        "rows": rows,
        "versions": versions(),
    }


def format_demo(report: dict[str, Any]) -> str:
    """The demo report as a plain-text table."""
    from pfd.report import format_table

    rows = []
    for r in report["rows"]:
        lo, hi = r["ci95"]
        rows.append({
            "student": r["student"],
            "map": r["setting"],
            "NFE": None if r["nfe"] is None else round(r["nfe"]),
            "PFD": f"{r['pfd']:.4f}",
            "± se": f"{r['stderr']:.4f}",
            "95% CI": f"[{lo:.4f}, {hi:.4f}]",
            "time (s)": f"{r['seconds']:.2f}",
        })
    head = (
        f"Teacher: 2-D mixture of 6 anisotropic Gaussians, PF-ODE map by {REFERENCE['solver']} "
        f"(rtol={REFERENCE['rtol']:g}), sigma 80 -> 0.002 -> denoise; n = {report['n']} shared noise "
        f"samples, seed {report['seed']}."
    )
    return head + "\n\n" + format_table(rows, ["student", "map", "NFE", "PFD", "± se", "95% CI", "time (s)"])

