"""DiffRatio vs two-score-network estimates of the score difference, and the trained students.

Part A (bias): on a 2-D mixture pair (teacher p: 8 Gaussians, std 0.1, radius 2; student q: a
perturbed mixture) where every score is analytic, fit from samples (i) a DiffRatio log-ratio
network r and (ii) two denoising-score-matching networks s_q, s_p, at several training budgets;
measure at several sigma the relative error of grad r and of s_q - s_p against the exact
s_q - s_p on x ~ q_sigma, and the relative error of the resulting generator gradient (a mixture
generator G = mu_c + std_c z, gradient w.r.t. its means and log-stds, same z / sigma / eps for all).

Part B (students): trains a DiffRatio student (reverse KL) on teacher samples, refits its ratio on
the frozen generator, and reports in-mode fraction, mode coverage, raw-map PFD (the coupling),
exact distributional PFD (empirical mixture of 20k student samples), ratio-corrected PFD and the
distance between the two student maps; plus trajectory students (a one-step regression student and
a 4-step Euler sampler) for PFD_map vs PFD_dist. Costs (NFE, seconds) of each route.

    python benchmarks/diffratio_bias.py [--budgets 300 1000 4000] [--train-steps 4000] [--n 4096]
Writes benchmarks/results/diffratio_bias.json (and .png when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import pfd
from pfd.adapters import RATIO_TRAIN, GeneratorStudent, GridMap, RatioCorrectedMap, fit_ratio, grad_log_ratio
from pfd.adapters.ratio import ratio_heldout_loss
from pfd.distill.diffratio import (
    DIFFRATIO_TRAIN,
    REFIT_TRAIN,
    fit_score_net,
    generator_gradient,
    ratio_score_difference,
    train_diffratio,
    two_score_difference,
)
from pfd.estimator import versions
from pfd.maps import CachedMap
from pfd.report import format_table, write_json

F64 = torch.float64
SIGMAS = [0.05, 0.2, 1.0, 3.0]
SIGMA_RANGE = (0.02, 5.0)


def circle_mixture(k=8, radius=2.0, std=0.1, rot=0.0, weights=None):
    ang = torch.arange(k, dtype=F64) * (2 * math.pi / k) + rot
    means = radius * torch.stack([ang.cos(), ang.sin()], 1)
    w = torch.ones(k, dtype=F64) if weights is None else torch.as_tensor(weights, dtype=F64)
    return pfd.GaussianMixture(w, means, torch.full((k,), std**2, dtype=F64))


class MixtureGenerator(torch.nn.Module):
    """G(z) = mu_c + exp(log_std_c) z with the component c of each row fixed beforehand: q is a mixture."""

    def __init__(self, gmm):
        super().__init__()
        self.means = torch.nn.Parameter(gmm.means.clone())
        self.log_std = torch.nn.Parameter(0.5 * gmm.covs.log())
        self.c = None

    def forward(self, z):
        return self.means[self.c] + self.log_std[self.c].exp()[:, None] * z


def rel_err(est, exact):
    return float((est - exact).pow(2).sum(-1).mean() / exact.pow(2).sum(-1).mean())


def part_a(p, q, budgets, m, seed):
    xp_pool, xq_pool = p.sample(65536, seed=seed + 1), q.sample(65536, seed=seed + 2)
    gen = MixtureGenerator(q)
    g = torch.Generator().manual_seed(seed + 3)
    comp = torch.multinomial(q.weights, m, replacement=True, generator=g)
    z, eps = torch.randn(m, 2, generator=g, dtype=F64), torch.randn(m, 2, generator=g, dtype=F64)
    gen.c = comp

    def exact_delta(x, s):
        return q.score(x, s) - p.score(x, s)

    rows = []
    for steps in budgets:
        t0 = time.perf_counter()
        cfg = RATIO_TRAIN.replace(train_steps=steps)
        fit = fit_ratio(xq_pool, xp_pool, sigma_min=SIGMA_RANGE[0], sigma_max=SIGMA_RANGE[1], seed=seed, config=cfg)
        t_ratio = time.perf_counter() - t0
        t0 = time.perf_counter()
        sq = fit_score_net(xq_pool, sigma_min=SIGMA_RANGE[0], sigma_max=SIGMA_RANGE[1], seed=seed + 10, config=cfg)
        sp = fit_score_net(xp_pool, sigma_min=SIGMA_RANGE[0], sigma_max=SIGMA_RANGE[1], seed=seed + 11, config=cfg)
        t_two = time.perf_counter() - t0
        d_ratio, d_two = ratio_score_difference(fit.log_ratio), two_score_difference(sq, sp)
        for sig in SIGMAS:
            s = torch.full((m,), sig, dtype=F64)
            with torch.no_grad():
                x = gen(z) + sig * eps
            exact = exact_delta(x, s)
            g_exact = generator_gradient(gen, exact_delta, z, s, eps)
            g_ratio = generator_gradient(gen, d_ratio, z, s, eps)
            g_two = generator_gradient(gen, d_two, z, s, eps)
            rows.append({
                "steps": steps, "sigma": sig,
                "delta_relerr_ratio": rel_err(grad_log_ratio(fit.log_ratio, x, s), exact),
                "delta_relerr_two_scores": rel_err(d_two(x, s), exact),
                "grad_relerr_ratio": float((g_ratio - g_exact).norm() / g_exact.norm()),
                "grad_relerr_two_scores": float((g_two - g_exact).norm() / g_exact.norm()),
                "ratio_heldout_loss": fit.heldout_loss, "seconds_ratio": t_ratio, "seconds_two_scores": t_two,
            })
        print(f"  budget {steps}: ratio fit {t_ratio:.1f}s, two score nets {t_two:.1f}s", flush=True)
    return rows


def mode_stats(x, gmm, radius_std=3.0):
    std = float(gmm.covs.sqrt().max())
    d = torch.cdist(x, gmm.means)
    inside = d.min(1).values < radius_std * std
    counts = torch.bincount(d.argmin(1)[inside], minlength=gmm.n_components)
    return float(inside.double().mean()), int((counts > 0.02 * x.shape[0]).sum())


def part_b(teacher, train_steps, n, n_emp, seed):
    out = {}
    data = teacher.sample(65536, seed=seed + 20)
    tmap = CachedMap(teacher.ode_map())
    z = pfd.canonical_noise(n, (2,), seed=seed)
    t0 = time.perf_counter()
    tmap(z)
    out["teacher_map_seconds"] = time.perf_counter() - t0

    def pfd_of(m):
        r = pfd.distance(tmap, m, noise=z, progress=False)
        return r.value, r.stderr

    # --- DiffRatio student
    res = train_diffratio(data, seed=seed, config=DIFFRATIO_TRAIN.replace(train_steps=train_steps))
    out["diffratio_train_seconds"] = res.seconds
    xs = res.sample(n_emp, seed=seed + 30)
    inmode, covered = mode_stats(xs, teacher)
    student_raw = GeneratorStudent(res.generator, kind="distribution", warn=False, shape=(2,))
    raw, raw_se = pfd_of(student_raw)
    emp_map = pfd.GaussianMixture.empirical(xs).ode_map()
    t0 = time.perf_counter()
    exact, exact_se = pfd_of(emp_map)
    t_exact = time.perf_counter() - t0
    t0 = time.perf_counter()
    held_end, _ = ratio_heldout_loss(res.ratio, res.sample(8192, seed=seed + 40), teacher.sample(8192, seed=seed + 42),
                                     res.sigma_min, res.sigma_max, seed=seed + 43)  # the ratio as left by training
    refit = res.refit_ratio(data, seed=seed + 41)
    t_fit = time.perf_counter() - t0
    rmap = RatioCorrectedMap(teacher, refit)
    t0 = time.perf_counter()
    ratio_pfd, ratio_se = pfd_of(rmap)
    t_ratio_map = time.perf_counter() - t0
    rmap_end = RatioCorrectedMap(teacher, res.ratio, res.sigma_min, res.sigma_max)
    ratio_end_pfd, _ = pfd_of(rmap_end)
    between = pfd.distance(rmap, emp_map, noise=z, progress=False)
    # refit variants: constant learning rate, fewer steps
    t0 = time.perf_counter()
    refit_c = res.refit_ratio(data, seed=seed + 41, lr_schedule="constant", config=REFIT_TRAIN.replace(train_steps=1500))
    t_c = time.perf_counter() - t0
    rmap_c = RatioCorrectedMap(teacher, refit_c)
    variants = [
        {"ratio": "end of training", "heldout_loss": held_end, "pfd_dist_ratio": ratio_end_pfd,
         "map_rms_vs_exact": pfd.distance(rmap_end, emp_map, noise=z, progress=False).value, "fit_seconds": 0.0},
        {"ratio": "refit 1500 steps, constant lr", "heldout_loss": refit_c.heldout_loss, "pfd_dist_ratio": pfd_of(rmap_c)[0],
         "map_rms_vs_exact": pfd.distance(rmap_c, emp_map, noise=z, progress=False).value, "fit_seconds": t_c},
        {"ratio": "refit 3000 steps, cosine lr (default)", "heldout_loss": refit.heldout_loss, "pfd_dist_ratio": ratio_pfd,
         "map_rms_vs_exact": between.value, "fit_seconds": t_fit},
    ]
    out["diffratio"] = {
        "in_mode_fraction": inmode, "modes_covered": covered, "modes": teacher.n_components,
        "pfd_raw_map": raw, "pfd_raw_map_stderr": raw_se,
        "pfd_dist_exact_empirical": exact, "pfd_dist_exact_stderr": exact_se, "n_empirical": n_emp,
        "pfd_dist_ratio_refit": ratio_pfd, "pfd_dist_ratio_stderr": ratio_se,
        "pfd_dist_ratio_end_of_training": ratio_end_pfd,
        "map_rms_ratio_vs_exact": between.value, "map_rms_ratio_vs_exact_stderr": between.stderr,
        "ratio_heldout_loss_refit": refit.heldout_loss, "ratio_heldout_loss_end_of_training": held_end,
        "ratio_heldout_by_sigma": refit.heldout_by_sigma, "chance_loss": refit.chance_loss,
        "cost": {
            "raw_map_nfe": 1,
            "ratio_route_nfe": rmap.nfe_per_sample, "ratio_route_extra": "one ratio forward+backward per NFE",
            "ratio_refit_seconds": t_fit, "ratio_map_seconds": t_ratio_map,
            "exact_empirical_route_seconds": t_exact, "n": n,
        },
        "history": res.history,
        "ratio_variants": variants,
    }
    # --- trajectory students
    out["trajectory_students"], out["trajectory_train_seconds"] = trajectory_students(teacher, pfd_of, n_emp, seed)
    # reference floor: the teacher's own samples through the same empirical route
    xt = teacher.sample(n_emp, seed=seed + 70)
    out["empirical_floor_pfd"] = pfd_of(pfd.GaussianMixture.empirical(xt).ode_map())[0]
    return out


def one_step_student(teacher, seed):
    """The regression one-step student of part B (the demo's training settings), as a trajectory student."""
    from pfd.demo import DEMO_ONE_STEP
    from pfd.distill.onestep import train_one_step_student

    one_step, _ = train_one_step_student(teacher.ode_map(), (2,), seed=seed + 51, data_seed=seed + 51,
                                         config=DEMO_ONE_STEP.replace(progress=False))
    return GeneratorStudent(one_step.fn, kind="trajectory", shape=(2,))


def trajectory_students(teacher, pfd_of, n_emp, seed, names=None):
    """Rows (PFD_map, exact PFD_dist, mode statistics) of the trajectory students; ``names`` picks some."""
    t0 = time.perf_counter()
    students = {"one-step regression MLP": one_step_student(teacher, seed)}
    t_train = time.perf_counter() - t0
    students["Euler 4-step (own grid)"] = GridMap(teacher.denoiser, [80.0, 5.0, 0.5, 0.05], solver="euler", shape=(2,))
    rows = []
    for name, st in students.items():
        if names is not None and name not in names:
            continue
        xs_t = st(pfd.canonical_noise(n_emp, (2,), seed=seed + 60))
        pm, pm_se = pfd_of(st)
        pdist, pdist_se = pfd_of(pfd.GaussianMixture.empirical(xs_t).ode_map())
        inm, cov = mode_stats(xs_t, teacher)
        rows.append({"student": name, "kind": st.kind, "pfd_map": pm, "pfd_map_stderr": pm_se, "pfd_dist_exact": pdist,
                     "pfd_dist_stderr": pdist_se, "in_mode_fraction": inm, "modes_covered": cov})
    return rows, t_train


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for steps in sorted({r["steps"] for r in rows}):
        rr = [r for r in rows if r["steps"] == steps]
        s = [r["sigma"] for r in rr]
        axes[0].loglog(s, [r["delta_relerr_ratio"] for r in rr], "o-", label=f"grad r, {steps} steps")
        axes[0].loglog(s, [r["delta_relerr_two_scores"] for r in rr], "s--", label=f"two scores, {steps} steps")
        axes[1].loglog(s, [r["grad_relerr_ratio"] for r in rr], "o-", label=f"grad r, {steps}")
        axes[1].loglog(s, [r["grad_relerr_two_scores"] for r in rr], "s--", label=f"two scores, {steps}")
    axes[0].set(xlabel="sigma", ylabel="relative MSE of s_q - s_p", title="score-difference estimate")
    axes[1].set(xlabel="sigma", ylabel="relative error", title="generator gradient")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", type=int, nargs="+", default=[300, 1000, 4000])
    ap.add_argument("--train-steps", type=int, default=4000)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--n-empirical", type=int, default=20000)
    ap.add_argument("--m", type=int, default=8192, help="points per sigma for the bias measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-students", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "diffratio_bias.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    teacher = circle_mixture()
    student = circle_mixture(radius=1.8, std=0.15, rot=0.15, weights=[2, 1, 1, 1, 2, 1, 1, 1])
    print("Part A: score-difference estimates", flush=True)
    rows = part_a(teacher, student, args.budgets, args.m, args.seed)
    print(format_table(rows, ["steps", "sigma", "delta_relerr_ratio", "delta_relerr_two_scores",
                              "grad_relerr_ratio", "grad_relerr_two_scores", "ratio_heldout_loss"]))
    report = {"config": vars(args), "teacher": teacher.to_dict(), "bias_student": student.to_dict(), "bias": rows}
    if not args.skip_students:
        print("Part B: trained students", flush=True)
        b = part_b(teacher, args.train_steps, args.n, args.n_empirical, args.seed)
        report["students"] = b
        d = b["diffratio"]
        print(format_table([{k: d[k] for k in ("in_mode_fraction", "modes_covered", "pfd_raw_map", "pfd_dist_exact_empirical",
                                               "pfd_dist_ratio_refit", "pfd_dist_ratio_end_of_training",
                                               "map_rms_ratio_vs_exact", "ratio_heldout_loss_refit",
                                               "ratio_heldout_loss_end_of_training")}],
                           ["in_mode_fraction", "modes_covered", "pfd_raw_map", "pfd_dist_exact_empirical",
                            "pfd_dist_ratio_refit", "pfd_dist_ratio_end_of_training", "map_rms_ratio_vs_exact",
                            "ratio_heldout_loss_refit", "ratio_heldout_loss_end_of_training"]))
        print(format_table(d["ratio_variants"], ["ratio", "heldout_loss", "pfd_dist_ratio", "map_rms_vs_exact", "fit_seconds"]))
        print(format_table(b["trajectory_students"], ["student", "kind", "pfd_map", "pfd_dist_exact", "in_mode_fraction",
                                                      "modes_covered"]))
        print("cost:", d["cost"], "train s:", round(b["diffratio_train_seconds"], 1),
              "empirical floor PFD:", round(b["empirical_floor_pfd"], 4))
    report["seconds"] = time.perf_counter() - t_all
    report["versions"] = versions()
    out = Path(args.out)
    write_json(out, report)
    png = plot(rows, out.with_suffix(".png"))
    print(f"wrote {out}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
