"""Generalization benchmark on an analytic Gaussian-mixture teacher (slow; not run in CI).

1. MtoG sweep: N = 2^2..2^10 x three MLP widths (|theta| spanning > 30x) x 2 seeds -> E_gen, E_mem,
   transition point per width, best-collapsing exponent of |theta|   -> results/mtog.json, mtog.png
   (resumable: finished runs live in results/mtog_runs.jsonl; rerun to continue a killed sweep)
2. Training dynamics at a small and a large N                       -> results/dynamics.json, .png
3. Bias-variance over K = 5 training sets, students and empirical models -> results/bias_variance.json, .png
4. A memorizing and a generalizing student scored by PFD and every baseline (in bias_variance.json
   under "side_by_side", printed as a table).

    python benchmarks/generalization.py            # full run (~30 min on 2 cores)
    python benchmarks/generalization.py --quick    # smoke test (~1 min), writes to results/quick/
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pfd
from pfd.analysis import (
    DSMTrainer,
    TrainConfig,
    bias_variance_study,
    compare_metrics,
    mtog_scaling,
    training_dynamics,
)
from pfd.analysis._runs import epochs_for_steps, train_set
from pfd.analysis.plots import plot_bias_variance, plot_dynamics, plot_mtog
from pfd.analytic.teachers import cross_teacher
from pfd.report import format_table, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run into results/quick/")
    ap.add_argument("--only", choices=["mtog", "dynamics", "bias-variance"], help="run one part")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(__file__).parent / "results" / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    teacher = cross_teacher()  # four modes (variance 0.1) at +-2 e1, +-2 e2 in R^4
    q = args.quick
    steps = 60 if q else 3000
    n_eval = 256 if q else 2048
    config = TrainConfig(train_steps=steps, n_eval=n_eval)
    widths = (16, 48, 128)

    if args.only in (None, "mtog"):
        t0 = time.perf_counter()
        n_trains = [2**k for k in (range(2, 6) if q else range(2, 11))]
        res = mtog_scaling(teacher, n_trains, widths, (0,) if q else (0, 1), out=out / "mtog_runs.jsonl",
                           config=config)
        res["seconds"] = time.perf_counter() - t0
        write_json(out / "mtog.json", res)
        plot_mtog(res, out / "mtog.png")
        rows = []
        tr = res["transitions"]
        for i, g in enumerate(tr["e_gen"]):
            row = {"width": g["width"], "|θ|": g["n_params"], "√|θ|": round(g["sqrt_params"], 1)}
            for f in ("e_gen", "e_mem", "e_gen_rel", "e_mem_rel"):
                t = tr[f][i]
                row[f"N* {f}"] = None if t["n_star"] is None else round(t["n_star"], 1)
                if not t["transition_in_range"]:
                    row[f"N* {f}"] = f"({row[f'N* {f}']})"
            row["R² e_mem_rel"] = None if tr["e_mem_rel"][i]["fit"] is None else round(tr["e_mem_rel"][i]["fit"]["r2"], 3)
            rows.append(row)
        print("\nMtoG transition points (logistic in log2 N, seed means)")
        print(format_table(rows, list(rows[0])))
        print("(N* in parentheses: the fitted midpoint lies outside the swept range)")
        for f in ("e_gen", "e_mem", "e_gen_rel", "e_mem_rel"):
            c = res["collapse"][f]
            print(f"collapse of {f}: best alpha = {c['best_alpha']}, residual {c['best_residual']:.4g} "
                  f"(slope of log2 N* on log2|θ|: {c['exponent_from_transitions']}); "
                  f"residual vs log2 N: {c['residual_log2N']:.4g}; "
                  f"vs log2(N/sqrt|θ|): {c['residual_log2N_over_sqrt_params']:.4g}")
        table = [{"N": r["n_train"], "width": r["width"], "seed": r["seed"], "E_gen": r["e_gen"], "E_mem": r["e_mem"],
                  "E_gen(emp)": r["e_gen_empirical"], "E_gen/E_gen(emp)": r["e_gen_rel"],
                  "E_mem/E_gen(emp)": r["e_mem_rel"]} for r in res["runs"]]
        print(format_table(table, list(table[0])))

    if args.only in (None, "dynamics"):
        dyn = []
        for n_train, epochs, every in ((16, 40, 4), (64, 60, 6)) if q else ((64, 4000, 100), (1024, 1000, 25)):
            r = training_dynamics(teacher, n_train, epochs=epochs, eval_every=every, config=config.replace(width=128),
                                  checkpoint=out / f"dynamics_N{n_train}.pt")
            dyn.append(r)
            f = r["features"]
            m = f["minimum"]
            print(f"\ndynamics N={n_train}: min E_gen {m['value']:.4f} at epoch {m['epoch']} (early: {m['early']}, rise after "
                  f"{m['rise_after']:.4f}, tol {f['tol']:.4f}); double descent: {f['double_descent']}; "
                  f"E_gen of empirical model {r['e_gen_empirical']:.4f}")
            cols = ["epoch", "e_gen", "e_mem", "train_loss", "heldout_loss"]
            print(format_table(r["rows"], cols))
        write_json(out / "dynamics.json", {"runs": dyn})
        for n_train in {r["config"]["n_train"] for r in dyn}:  # checkpoints only serve a killed run
            (out / f"dynamics_N{n_train}.pt").unlink(missing_ok=True)
        plot_dynamics(dyn, out / "dynamics.png")

    if args.only in (None, "bias-variance"):
        studies = [bias_variance_study(teacher, n_train, 3 if q else 5, config=config.replace(width=48))
                   for n_train in ((8, 64) if q else (16, 256))]
        rows = []
        for s in studies:
            for kind in ("students", "empirical"):
                d = s[kind]
                rows.append({"N": s["config"]["n_train"], "model": kind, "E_bias²": d["bias2"], "E_var": d["var"],
                             "E_bias² plug-in": d["bias2_plugin"], "E_var plug-in": d["var_plugin"],
                             "E_bias²+E_var": d["bias2_plus_var"], "mean E_gen²": d["mean_gen2"],
                             "rel. residual": d["identity_residual"]})
        print("\nBias-variance (K independent training sets)")
        print(format_table(rows, list(rows[0]), floatfmt=".6g"))
        # side by side: a memorizing and a generalizing student, PFD vs every baseline
        test = teacher.sample(n_eval, seed=987654)
        named = {}
        for n_train in ((8, 256) if q else (16, 1024)):
            data = train_set(teacher, n_train, 100)
            tr = DSMTrainer(data, width=128, seed=100)
            tr.train(epochs_for_steps(n_train, 256, steps))
            named[f"DSM student N={n_train}"] = (tr.ode_map(), data)
            named[f"empirical model N={n_train}"] = (pfd.GaussianMixture.empirical(data).ode_map(), data)
        named["teacher itself"] = (teacher.ode_map(), data)
        side = compare_metrics(named, teacher, test, n=n_eval, seed=1)
        cols = ["student", "e_gen", "e_mem", "memorization_ratio", "frechet", "mmd2", "precision", "recall",
                "density", "coverage", "ct"]
        print("\nPFD beside the sample baselines (same samples; Fréchet/MMD/PRDC/C_T against held-out data)")
        print(format_table(side, cols))
        write_json(out / "bias_variance.json", {"studies": studies, "side_by_side": side,
                                                "side_by_side_note": "train set of 'teacher itself' = the largest N set"})
        plot_bias_variance(studies, out / "bias_variance.png")
    roots = [round(math.sqrt(DSMTrainer(torch.zeros(2, 4), width=w).n_params), 1) for w in widths]
    print(f"\nresults in {out}; sqrt(|θ|) per width {widths}: {roots}")


if __name__ == "__main__":
    main()
