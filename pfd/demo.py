"""The default job: an analytic 2-D Gaussian-mixture teacher scored against real students.

Students (all evaluated on the same canonical noise as the teacher):

* the teacher's own mixture under the paper's sampler (Heun, 18 grid points, 35 NFE) and under
  cheap samplers: the discretisation error of each setting;
* a slightly wrong mixture (means 5% further out, covariances 20% wider);
* memorizing models: the empirical distribution of N training points drawn from the teacher,
  for several N (their PFD to the teacher falls as N grows);
* a one-step student: an MLP distilled by regression onto the teacher's noise-to-data pairs
  (:func:`pfd.distill.onestep.train_one_step_student`, trained here in a few seconds, on noise
  disjoint from the evaluation noise).

The teacher's map is a tight-tolerance dopri5 solve (the reference), computed once and cached.
"""

from __future__ import annotations

import time
from typing import Any

from pfd._train import TrainConfig
from pfd.analytic.gmm import GaussianMixture
from pfd.analytic.teachers import hexagon_teacher
from pfd.distill.onestep import train_one_step_student
from pfd.estimator import distance, versions
from pfd.maps import CachedMap
from pfd.noise import derive_seed

__all__ = ["DEMO_ONE_STEP", "run_demo"]

REFERENCE = {"solver": "dopri5", "rtol": 1e-8, "atol": 1e-8}
DEMO_ONE_STEP = TrainConfig(width=128, depth=3, train_steps=1500, batch_size=512, lr=2e-3)
"""The demo's one-step student (:func:`pfd.distill.onestep.train_one_step_student`): seconds on a CPU."""


def _perturbed(gmm: GaussianMixture) -> GaussianMixture:
    return GaussianMixture(gmm.weights, 1.05 * gmm.means, 1.2 * gmm.component_covs())


def run_demo(n: int = 4096, seed: int = 0, batch_size: int = 1024, progress: bool = True,
             train_steps: int = 1500, solver_error: bool | str = "cheap") -> dict[str, Any]:
    """Run the default job and return a JSON-serialisable report (rows of PFD results).

    ``solver_error``: each PFD's solver-error estimate (see :func:`pfd.distance`); False for none.
    """
    gmm = hexagon_teacher()
    teacher = CachedMap(gmm.ode_map(**REFERENCE, name="teacher GMM (reference)"))
    rows: list[dict[str, Any]] = []

    def score(label: str, student, setting: str, extra: dict[str, Any] | None = None) -> None:
        t0 = time.perf_counter()
        res = distance(teacher, student, n=n, seed=seed, batch_size=batch_size, progress=progress,
                       solver_error=solver_error)
        se = res.solver_error
        row = {
            "student": label,
            "setting": setting,
            "pfd": res.value,
            "stderr": res.stderr,
            "ci95": list(res.ci95),
            "nfe": res.nfe[1],
            "solver_error": None if se is None else se.value,
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
    # a one-step distilled student, trained on the canonical noise of seed + 1 (not the evaluation noise)
    config = DEMO_ONE_STEP.replace(train_steps=train_steps, progress=progress)
    student, hist = train_one_step_student(teacher, gmm.event_shape, seed=seed + 1, data_seed=seed + 1, config=config)
    score("one-step MLP (regression distilled)", student, "1 step", {"train_seconds": hist["seconds"]})
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
            "± solver": _fmt_solver(r),
            "95% CI": f"[{lo:.4f}, {hi:.4f}]",
            "time (s)": f"{r['seconds']:.2f}",
        })
    head = (
        f"Teacher: 2-D mixture of 6 anisotropic Gaussians, PF-ODE map by {REFERENCE['solver']} "
        f"(rtol={REFERENCE['rtol']:g}), sigma 80 -> 0.002 -> denoise; n = {report['n']} shared noise "
        f"samples, seed {report['seed']}."
    )
    cols = ["student", "map", "NFE", "PFD", "± se", "± solver", "95% CI", "time (s)"]
    if all(r.get("solver_error") is None and not r["result"].get("solver_error") for r in report["rows"]):
        cols.remove("± solver")
    foot = ("\n\n± se: sampling error (more noise samples shrink it); ± solver: estimated PF-ODE solver error "
            "of the value (more steps shrink it; see docs/solver-error.md).") if "± solver" in cols else ""
    return head + "\n\n" + format_table(rows, cols) + foot


def _fmt_solver(row: dict[str, Any]) -> str:
    se = row["result"].get("solver_error")
    if not se:
        return "-"
    if se["value"] is None:
        return "unknown"
    return "0 (exact)" if se["status"] == "exact" else f"{se['value']:.4f}"

