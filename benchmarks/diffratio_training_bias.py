"""DiffRatio vs DMD/VSD inside the training loop, against the exact score difference (issue 18 A).

Target p: 8 Gaussians (std 0.1) on a circle of radius 2 (2-D). Generator: a learnable mixture of
8 affine push-forwards of Gaussian noise (pfd.distill.matching.MixtureGenerator), so its law q and
q_sigma are exactly known at every step and the exact s_q - s_p is available. Per seed, every arm
starts from the same generator initialisation and uses the same generator optimiser, batch size,
sigma law (log-uniform in [0.02, 5]) and weight w = sigma; auxiliary networks get the same number
of updates (2 per generator step, batch 256):

* oracle              exact s_q - s_p (reference: no estimation error)
* diffratio-h{H}x{D}  grad r of an online ratio network of each size in --ratio-sizes
* dmd                 frozen PRE-TRAINED teacher score net (real pre-training error) + online fake
                      score net initialised from it
* dmd-exact-teacher   exact teacher score + the same online fake score (isolates the fake-score lag)

Measured along training (every --eval-every steps, fixed evaluation draws): the relative bias of
the training-weighted, sigma-integrated generator gradient ||g - g*|| / ||g*|| and its cosine with
g*, also per sigma band; at the end the exact PFD_dist = PFD(q, p) between the two Gaussian
mixtures (= E_gen, the data law being the teacher's law), on shared canonical noise. Statistics:
mean and Student-t 95% intervals over seeds, and paired per-seed differences between arms.

Resumable: each (arm, seed, settings) result is stored in the JSON under "runs" and never redone.

    PYTHONPATH=. python benchmarks/diffratio_training_bias.py [--seeds 10] [--steps 1500] [--quick]
Writes benchmarks/results/diffratio_training_bias.json and .png.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _fair import RunStore, mean_ci95, run_key

import pfd
from pfd.adapters import RATIO_TRAIN
from pfd.distill.diffratio import fit_score_net
from pfd.distill.matching import MixtureGenerator, train_matching
from pfd.estimator import versions
from pfd.report import format_table

F64 = torch.float64


def circle(k: int = 8, radius: float = 2.0, std: float = 0.1) -> pfd.GaussianMixture:
    ang = torch.arange(k, dtype=F64) * (2 * math.pi / k)
    return pfd.GaussianMixture(torch.ones(k, dtype=F64), radius * torch.stack([ang.cos(), ang.sin()], 1),
                               torch.full((k,), std**2, dtype=F64))


def arm_names(config: dict[str, Any]) -> list[str]:
    return (["oracle"] + [f"diffratio-h{h}x{d}" for h, d in config["ratio_sizes"]] + ["dmd", "dmd-exact-teacher"])


def run_one(arm: str, seed: int, config: dict[str, Any], cache: dict[str, Any]) -> dict[str, Any]:
    target = circle(**config["target"])
    data = target.sample(config["n_reference"], seed=1000 + seed)
    lo, hi = config["sigma_range"]
    teacher = None
    extra: dict[str, Any] = {}
    if arm.startswith("dmd"):
        if seed not in cache:
            t0 = time.perf_counter()
            score_cfg = pfd.TrainConfig(width=config["score_size"][0], depth=config["score_size"][1],
                                        train_steps=config["teacher_steps"], batch_size=config["batch_size"],
                                        lr=RATIO_TRAIN.lr, progress=False)
            net = fit_score_net(data, sigma_min=lo, sigma_max=hi, seed=2000 + seed, config=score_cfg)
            z = pfd.canonical_noise(config["n_pfd"], (2,), seed=7)
            res = pfd.distance(target.ode_map(), pfd.DiffusionMap(net.denoiser, shape=(2,)), noise=z, progress=False)
            cache[seed] = (net, {"teacher_pfd": res.value, "teacher_pfd_stderr": res.stderr,
                                 "teacher_seconds": time.perf_counter() - t0})
        teacher, extra = cache[seed]
    if arm.startswith("diffratio"):
        h, d = (int(v) for v in arm.split("-h")[1].split("x"))
        arm_kind = "diffratio"
    else:
        arm_kind = arm
        h, d = config["score_size"]
    train = pfd.TrainConfig(width=h, depth=d, train_steps=config["steps"], batch_size=config["batch_size"],
                            lr=config["lr"], n_eval=config["n_eval"], progress=False)
    gen0 = MixtureGenerator.initial(target, seed=seed, **config["init"])
    res = train_matching(target, gen0, arm_kind, reference=data, teacher=teacher, aux_steps=config["aux_steps"],
                         aux_lr=config["aux_lr"], sigma_min=lo, sigma_max=hi, eval_every=config["eval_every"], seed=seed,
                         config=train)
    law = res.generator.law()
    z = pfd.canonical_noise(config["n_pfd"], (2,), seed=7)
    pd = pfd.distance(target.ode_map(), law.ode_map(), noise=z, progress=False)
    pd0 = pfd.distance(target.ode_map(), gen0.law().ode_map(), noise=z, progress=False)
    return {"arm": arm, "seed": seed, "aux_params": res.aux_params, "seconds": res.seconds,
            "pfd_dist": pd.value, "pfd_dist_stderr": pd.stderr, "pfd_dist_init": pd0.value,
            **res.summary(), "history": res.history, **extra}


def aggregate(config: dict[str, Any], runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    arms: dict[str, Any] = {}
    for arm in arm_names(config):
        rs = sorted((r for r in runs.values() if r["arm"] == arm), key=lambda r: r["seed"])
        if not rs:
            continue
        n_bands = len(rs[0]["history"][0]["rel_by_band"])
        band = [mean_ci95([math.sqrt(sum(h["rel_by_band"][j] ** 2 for h in r["history"]) / len(r["history"]))
                           for r in rs]) for j in range(n_bands)]
        pd, gb, cs = mean_ci95([r["pfd_dist"] for r in rs]), mean_ci95([r["grad_bias"] for r in rs]), \
            mean_ci95([r["cosine"] for r in rs])
        arms[arm] = {"seeds": [r["seed"] for r in rs], "aux_params": rs[0]["aux_params"],
                     "pfd_dist": [r["pfd_dist"] for r in rs], "pfd_dist_mean": pd["mean"], "pfd_dist_ci95": pd["ci95"],
                     "grad_bias": [r["grad_bias"] for r in rs], "grad_bias_mean": gb["mean"], "grad_bias_ci95": gb["ci95"],
                     "cosine_mean": cs["mean"], "cosine_ci95": cs["ci95"],
                     "field_rel_mse_mean": mean_ci95([r["field_rel_mse"] for r in rs])["mean"],
                     "grad_bias_by_band": [{"sigma_lo": rs[0]["history"][0]["band_edges"][j],
                                            "sigma_hi": rs[0]["history"][0]["band_edges"][j + 1],
                                            "mean": band[j]["mean"], "ci95": band[j]["ci95"]} for j in range(n_bands)],
                     "seconds_mean": mean_ci95([r["seconds"] for r in rs])["mean"]}
        if arm.startswith("dmd"):
            arms[arm]["teacher_pfd_mean"] = mean_ci95([r.get("teacher_pfd") for r in rs])["mean"]
    paired = []
    for a in arm_names(config):
        for b in ("dmd", "dmd-exact-teacher"):
            if a == b or a not in arms or b not in arms or not a.startswith("diffratio"):
                continue
            ra = {r["seed"]: r for r in runs.values() if r["arm"] == a}
            rb = {r["seed"]: r for r in runs.values() if r["arm"] == b}
            common = sorted(set(ra) & set(rb))
            for q in ("pfd_dist", "grad_bias", "cosine"):
                st = mean_ci95([ra[s][q] - rb[s][q] for s in common])
                paired.append({"a": a, "b": b, "quantity": q, "n": st["n"], "mean_diff": st["mean"],
                               "paired_ci95": st["ci95"]})
    return {"arms": arms, "paired": paired}


def plot(report: dict[str, Any], runs: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(report["arms"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.0))
    colors = {a: f"C{i}" for i, a in enumerate(arms)}
    for a in arms:
        if a == "oracle":
            continue
        rs = [r for r in runs.values() if r["arm"] == a]
        steps = [h["step"] for h in rs[0]["history"]]
        cos = torch.tensor([[h["cosine"] for h in r["history"]] for r in rs])
        axes[0].plot(steps, cos.median(0).values, color=colors[a], label=a)
        axes[0].fill_between(steps, cos.quantile(0.25, 0).numpy(), cos.quantile(0.75, 0).numpy(), color=colors[a],
                             alpha=0.15)
        bands = report["arms"][a]["grad_bias_by_band"]
        mids = [math.sqrt(b["sigma_lo"] * b["sigma_hi"]) for b in bands]
        axes[1].errorbar(mids, [b["mean"] for b in bands],
                         yerr=[[b["mean"] - b["ci95"][0] for b in bands], [b["ci95"][1] - b["mean"] for b in bands]]
                         if bands[0]["ci95"] else None, marker="o", ms=3, capsize=2, color=colors[a], label=a)
    axes[0].set_xlabel("generator step")
    axes[0].set_ylabel("cosine(g_arm, g_exact) (median, IQR over seeds)")
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].legend(fontsize=7)
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].axhline(1, color="k", lw=0.5, ls="--")
    axes[1].set_xlabel("sigma band (geometric mid)")
    axes[1].set_ylabel("relative gradient bias ||g - g*|| / ||g*||")
    axes[1].legend(fontsize=7)
    means = [report["arms"][a]["pfd_dist_mean"] for a in arms]
    err = [[m - (report["arms"][a]["pfd_dist_ci95"] or [m, m])[0] for a, m in zip(arms, means, strict=True)],
           [(report["arms"][a]["pfd_dist_ci95"] or [m, m])[1] - m for a, m in zip(arms, means, strict=True)]]
    axes[2].bar(range(len(arms)), means, yerr=err, capsize=3, color=[colors[a] for a in arms])
    axes[2].set_xticks(range(len(arms)))
    axes[2].set_xticklabels(arms, rotation=25, ha="right", fontsize=7)
    axes[2].set_ylabel("final PFD_dist(q, p) (mean, 95% CI)")
    fig.suptitle(f"DiffRatio vs DMD inside training, {len(report['config']['seeds'])} seeds"
                 + ("" if report.get("complete") else " (PARTIAL)"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _try_plot(report: dict[str, Any], runs: dict[str, Any], path: Path) -> None:
    try:
        plot(report, runs, path)
    except ImportError:
        print("(matplotlib not installed: no plot)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=1500, help="generator steps per run")
    ap.add_argument("--quick", action="store_true", help="2 seeds, 60 steps, small nets (seconds)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "diffratio_training_bias.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    config: dict[str, Any] = {
        "target": {"k": 8, "radius": 2.0, "std": 0.1}, "init": {"shrink": 0.5, "rotate": 0.2, "jitter": 0.1, "scale": 0.4},
        "seeds": list(range(args.seeds)), "steps": args.steps, "aux_steps": 2, "batch_size": 256,
        "sigma_range": [0.02, 5.0], "lr": 5e-3, "aux_lr": 1e-3, "teacher_steps": 3000, "score_size": [64, 3],
        "ratio_sizes": [[16, 2], [64, 3]], "n_reference": 65536, "eval_every": 100, "n_eval": 4096, "n_pfd": 4096,
    }
    if args.quick:
        config.update(seeds=[0, 1], steps=60, teacher_steps=100, eval_every=30, n_eval=512, n_pfd=512,
                      n_reference=4096, score_size=[16, 2], ratio_sizes=[[8, 2], [16, 2]])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    store = RunStore(out)
    base = {k: v for k, v in config.items() if k != "seeds"}
    arms = arm_names(config)
    from pfd.adapters.ratio import RatioNet
    from pfd.distill.diffratio import ScoreNet
    from pfd.distill.matching import n_params
    config["ratio_params"] = {f"h{h}x{d}": n_params(RatioNet(2, h, d)) for h, d in config["ratio_sizes"]}
    config["score_params"] = n_params(ScoreNet(2, *config["score_size"]))
    t_start = time.perf_counter()
    cache: dict[str, Any] = {}
    mine: dict[str, Any] = {}

    def report(complete: bool) -> dict[str, Any]:
        return {"config": config, "complete": complete, **aggregate(config, mine), "versions": versions(),
                "seconds_this_session": time.perf_counter() - t_start}

    for seed in config["seeds"]:  # seeds outer: a partial sweep has every arm for its first seeds (paired)
        for arm in arms:
            key = run_key({"arm": arm, "seed": seed, **base})
            rec = store.get(key)
            if rec is None:
                rec = run_one(arm, seed, config, cache)
                mine[key] = rec
                store.put(key, rec, report(False))
            else:
                mine[key] = rec
            print(f"  seed {seed} {arm:22s} PFD_dist {rec['pfd_dist']:.4f}  grad bias {rec['grad_bias']:.3f}"
                  f"  cos {rec['cosine']:.3f}  [{time.perf_counter() - t_start:.0f}s]", flush=True)
        cache.pop(seed, None)
        _try_plot(report(False), mine, out.with_suffix(".png"))
    final = report(True)
    store.save(final)
    rows = [{"arm": a, "aux_params": v["aux_params"], "pfd_dist": v["pfd_dist_mean"],
             "pfd_ci95": v["pfd_dist_ci95"], "grad_bias": v["grad_bias_mean"], "bias_ci95": v["grad_bias_ci95"],
             "cosine": v["cosine_mean"]} for a, v in final["arms"].items()]
    print(format_table(rows, list(rows[0])))
    print(format_table(final["paired"], ["a", "b", "quantity", "n", "mean_diff", "paired_ci95"]))
    _try_plot(final, mine, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
