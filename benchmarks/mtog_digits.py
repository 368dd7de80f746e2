"""Fair memorization -> generalization (MtoG) sweep on the 64-D digits teacher (slow; not in CI).

Students: EDM-preconditioned MLPs (and optionally a conv net) trained by DSM, each to its loss
plateau (see ``config.steps`` in the result), one ensemble per model size over all seeds x N.
Measures E_gen and E_mem per run, fits the transition N* on E_gen per size with bootstrap 95%
CIs over seeds, and the collapse exponent alpha of N / |theta|^alpha with its CI.

    python benchmarks/mtog_digits.py                       # full sweep (GPU: --device cuda)
    python benchmarks/mtog_digits.py --quick               # smoke run into results/quick/
    python benchmarks/mtog_digits.py --report-only         # refit/plot from the runs file

Resumable: finished runs live in <out>/mtog_digits_runs.jsonl, keyed by every setting that
determines them; rerun the same command to continue. Writes <out>/mtog_digits.json and .png
(and the teacher figure digits_teacher.png).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = ["mlp:32:3", "mlp:128:3", "mlp:512:3", "mlp:1024:4"]


def main(argv: list[str] | None = None) -> int:
    import torch

    from pfd.analysis.mtog import DEFAULT_TRAIN, half_octaves, mtog_sweep
    from pfd.analysis.plots import plot_digits_teacher, plot_mtog_sweep
    from pfd.report import write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny smoke sweep into results/quick/")
    ap.add_argument("--out-dir", default=None, help="output folder (default benchmarks/results[/quick])")
    ap.add_argument("--sizes", default=",".join(SIZES), help="comma-separated mlp:W:D / conv:C:B")
    ap.add_argument("--n-min", type=int, default=8)
    ap.add_argument("--n-max", type=int, default=2048)
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds 0..S-1 (default 5)")
    ap.add_argument("--n-eval", type=int, default=4096)
    ap.add_argument("--max-steps", type=int, default=DEFAULT_TRAIN["max_steps"])
    ap.add_argument("--min-steps", type=int, default=DEFAULT_TRAIN["min_steps"])
    ap.add_argument("--lr", type=float, default=DEFAULT_TRAIN["lr"])
    ap.add_argument("--target", choices=("sample", "posterior"), default="sample",
                    help="DSM target: training point (default) or exact empirical denoiser")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--wall-budget", type=float, default=None,
                    help="seconds of training before all units stop (unfinished ones are checkpointed; rerun continues)")
    ap.add_argument("--checkpoint-every", type=float, default=600.0,
                    help="seconds of training between a unit's checkpoints (0: only when the wall budget stops it)")
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--report-only", action="store_true", help="no training: refit from finished runs")
    ap.add_argument("--no-teacher-figure", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out_dir) if args.out_dir else Path(__file__).parent / "results" / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        sizes, n_trains, seeds, n_eval = ["mlp:16:2", "mlp:64:2"], [8, 16, 32, 64], [0, 1], 256
        train = {"max_steps": 300, "min_steps": 100, "check_every": 50}
    else:
        sizes, n_trains, seeds, n_eval = args.sizes.split(","), half_octaves(args.n_min, args.n_max), list(
            range(args.seeds)), args.n_eval
        train = {"max_steps": args.max_steps, "min_steps": args.min_steps, "lr": args.lr, "target": args.target}
    if not args.no_teacher_figure and not args.report_only:
        plot_digits_teacher(out / "digits_teacher.png")
    t0 = time.time()
    runs_file = out / "mtog_digits_runs.jsonl"

    def on_unit(recs):
        r0 = recs[0]
        print(f"[{time.time() - t0:7.1f}s] {r0['arch']}:{r0['width']}:{r0['depth']} |θ|={r0['n_params']:,}: "
              f"{len(recs)} runs, steps {min(r['steps'] for r in recs)}..{max(r['steps'] for r in recs)}, "
              f"train {r0['train_seconds_unit']:.0f}s", flush=True)

    if args.report_only:
        import json

        prev_full = json.loads((out / "mtog_digits.json").read_text())
        prev = prev_full["config"]
        sizes, n_trains, seeds = prev["sizes"], prev["n_trains"], prev["seeds"]
        train, n_eval = prev["train"], prev["n_eval"]
        args.device, args.wall_budget = prev["device"], None
    if args.report_only:  # every run in the file belongs to the sweep whose config the JSON holds
        from pfd.analysis._runs import read_records
        from pfd.analysis.mtog import mtog_report

        runs = [r for r in read_records(runs_file, ("key",)).values()
                if r["size"] in sizes and r["seed"] in seeds and r["n_train"] in n_trains]
        res = mtog_report(runs, prev, n_boot=args.n_boot)
    else:
        res = mtog_sweep("digits", n_trains, sizes, seeds, out=runs_file, train=train, n_eval=n_eval,
                         device=args.device, processes=args.processes, wall_budget=args.wall_budget,
                         n_boot=args.n_boot, progress=False, on_unit=on_unit,
                         checkpoint_every=args.checkpoint_every or None)
    if args.report_only:
        res["seconds"] = prev_full.get("seconds")
        res["refit_seconds"] = time.time() - t0
        res["sweep"] = prev_full.get("sweep")
    else:
        res["seconds"] = time.time() - t0
        res["sweep"] = {"device": args.device, "processes": args.processes, "wall_seconds": res["seconds"]}
    res["verdict"] = verdict(res)
    write_json(out / "mtog_digits.json", res)
    if res["runs"]:
        plot_mtog_sweep(res, out / "mtog_digits.png")
    print(summary(res))
    return 0


def verdict(res: dict) -> str:
    """The verdict on the paper's N / sqrt|theta| claim, in words, from the numbers alone.

    The claim concerns the memorization -> generalization transition, so it is tested only on the
    sizes that memorize at the smallest N (``res["memorizing"]``: they copy training points and
    their E_gen sits at the memorizer's). It is a test when at least 4 such sizes span at least
    100x in |theta| and at most 10% of their runs are not shown to have converged (stopped at the
    step cap with E_gen still moving by more than 2% over the second half of training, or without
    a probe to tell); then the collapse
    exponent's 95% CI decides: it supports the claim when it contains 1/2, excludes 0 and is at
    most 0.5 wide, and refutes it when it excludes 1/2.
    """
    import math

    c, conv = res["collapse"], res["convergence"]
    pending = res.get("pending") or []
    if not conv:
        return "NO RESULT yet: no model size has finished" + (f" (checkpointed: {', '.join(pending)})" if pending else "") + "."
    if pending:  # the verdict below is about the finished sizes only
        return (f"INCOMPLETE: {', '.join(pending)} still training (checkpointed; rerun to continue); so far: "
                + verdict({**res, "pending": []}))
    params = res["config"]["params"]
    mem = (res.get("memorizing") or {}).get("sizes")
    fit = (res.get("memorizing") or {}).get("fit")
    parts = []
    if mem is None:  # runs without copy fractions
        sizes = list(conv)
    else:
        sizes = mem
        span = max(params[m] for m in mem) / min(params[m] for m in mem) if mem else 0.0
        parts.append(f"{len(mem)} of {len(conv)} sizes memorize at the smallest N (copy fraction >= "
                     f"{res['memorizing']['rule']['copy_fraction_min']} and E_gen at the memorizer's)"
                     + (f": {', '.join(mem)}, spanning {span:.0f}x in |theta|" if mem else ""))
        if fit is not None:  # some but not all sizes memorize: the claim is tested on those alone
            c = fit["collapse"]
    n_runs = sum(sum(conv[z]["stopped_by"].values()) for z in sizes if z in conv)
    capped = sum(conv[z]["stopped_by"].get("cap", 0) + conv[z]["stopped_by"].get("wall", 0) for z in sizes if z in conv)
    # a capped run whose E_gen stopped moving (probe at part of the cap) counts as converged
    unconv = sum(conv[z].get("unconverged", conv[z]["stopped_by"].get("cap", 0)) + conv[z]["stopped_by"].get("wall", 0)
                 for z in sizes if z in conv)
    reasons = []
    if mem is None:
        reasons.append("memorization at small N was not measured (runs without copy fractions)")
    elif len(mem) < 4:
        reasons.append("fewer than 4 sizes memorize at small N")
    elif max(params[m] for m in mem) < 100 * min(params[m] for m in mem):
        reasons.append("the memorizing sizes span less than 100x in |theta|")
    probed = sum(conv[z].get("capped_probed", 0) for z in sizes if z in conv)
    if n_runs and unconv > 0.1 * n_runs:
        reasons.append(f"{unconv} of {n_runs} runs are not shown to have converged ({capped} stopped at the step cap, "
                       f"not at a loss plateau; {probed} of those were scored half-way too, and "
                       f"{capped - unconv} kept E_gen within 2% over the second half)")
    elif capped:
        parts.append(f"{capped} of {n_runs} runs stopped at the step cap, {capped - unconv} of them with E_gen within "
                     "2% over the second half of training")
    best_mem = min(v["e_mem_rel_at_smallest_n"] for v in conv.values())
    if best_mem > 0.1:
        parts.append(f"no student memorized as a map (best E_mem / E_gen(memorizer) at the smallest N: {best_mem:.2f}, "
                     "not ~0)")
    ci, sci = c.get("alpha_ci95"), c.get("slope_ci95")
    if ci and sci:
        agree = not (ci[1] < sci[0] or sci[1] < ci[0])
        parts.append(f"collapse exponent alpha = {c['alpha']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] "
                     f"({'includes' if ci[0] <= 0.5 <= ci[1] else 'excludes'} 1/2, "
                     f"{'includes' if ci[0] <= 0 <= ci[1] else 'excludes'} 0); the slope of log2 N* against "
                     f"log2|theta| is {c['slope_log2_nstar_vs_log2_params']:.2f} [{sci[0]:.2f}, {sci[1]:.2f}]"
                     + ("" if agree else "; the two estimators disagree beyond their seed-bootstrap CIs, so the CIs "
                        "understate the uncertainty (model misspecification, not seed noise)"))
        tr = fit["transitions"] if fit is not None else res["transitions"]
        ratios = [t["n_star"] / math.sqrt(t["params"]) for t in tr if t["n_star"] is not None and t["size"] in sizes]
        if ratios:
            parts.append(f"N* / sqrt|theta| = {min(ratios):.2f} .. {max(ratios):.2f} (the paper: ~1)")
    if reasons:
        head = "NOT A TEST of the claim: " + "; ".join(reasons)
    elif not (ci and sci):
        head = "NO VERDICT: the collapse exponent could not be fitted with a CI"
    elif ci[0] <= 0.5 <= ci[1] and not ci[0] <= 0 <= ci[1] and ci[1] - ci[0] <= 0.5:
        head = "SUPPORTS the claim: alpha = 1/2 is inside the 95% CI and alpha = 0 is not"
    elif not ci[0] <= 0.5 <= ci[1]:
        head = "REFUTES the claim: alpha = 1/2 is outside the 95% CI"
    else:
        head = "INCONCLUSIVE: the 95% CI of alpha is too wide to tell 1/2 from 0"
    return "; ".join([head, *parts]) + "."


def summary(res: dict) -> str:
    lines = [f"complete: {res['complete']} ({res['n_runs']}/{res['n_runs_expected']} runs)"
             + (f"; checkpointed, continue by rerunning: {', '.join(res['pending'])}" if res.get("pending") else "")]
    for t in res["transitions"]:
        ci = t["n_star_ci95"]
        lines.append(f"  {t['size']:>12} |θ| = {t['params']:>9,}: N* = "
                     + ("-" if t["n_star"] is None else f"{t['n_star']:.0f}")
                     + ("" if ci is None else f"  [{ci[0]:.0f}, {ci[1]:.0f}]")
                     + f"  (in range: {t['transition_in_range']})")
    c = res["collapse"]
    if c:
        lines.append(f"  collapse alpha = {c['alpha']}, 95% CI {c['alpha_ci95']}; slope of log2 N* vs log2|θ| = "
                     f"{c['slope_log2_nstar_vs_log2_params']} CI {c['slope_ci95']}")
    for s, v in res["convergence"].items():
        lines.append(f"  {s}: steps {v['steps_min']}..{v['steps_max']} (median {v['steps_median']:.0f}), "
                     f"stopped {v['stopped_by']}, E_mem/E_gen(memorizer) at N={v['smallest_n']}: "
                     f"{v['e_mem_rel_at_smallest_n']:.3f} (max {v['e_mem_rel_at_smallest_n_max']:.3f})"
                     + ("" if v.get("copy_fraction_at_smallest_n") is None else
                        f", copy fraction {v['copy_fraction_at_smallest_n']:.2f}")
                     + ("" if not v.get("capped") else
                        f", capped runs with E_gen drift > 2% (or unprobed): {v['unconverged']}/{v['capped']}"))
    lines.append("verdict: " + res.get("verdict", ""))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
