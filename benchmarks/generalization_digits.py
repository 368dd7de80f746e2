"""Generalization analyses on the digits teacher (64-D, `pfd.analytic.digits_teacher`); slow, not in CI.

Four studies, each writing benchmarks/results/<name>_digits.json (+ .png) with a `config` block:

1. bias-variance  unbiased E_bias^2, E_var and mean E_gen^2 of K DSM students (independent training
                  sets) over N and two model sizes, with CIs over noise and over students (jackknife)
2. dynamics       E_gen, E_mem, train / held-out DSM loss over training for several N and seeds;
                  early-learning minimum and double descent per seed, tolerance vs seed spread
3. distill        DSM students distilled into one-step and 4-step trajectory students: E_gen and
                  E_mem of each distilled student next to its DSM teacher's
4. metrics        PFD E_gen / E_mem next to memorization ratio, Frechet, MMD, KID, PRDC and C_T on
                  the same samples, over N

Resumable: every finished unit (a trained student, a decomposition, a dynamics run, a distilled
student, a scored student) is kept under results/digits_runs/ (student checkpoints, JSONL records
keyed by their full settings); a killed run restarted with the same arguments redoes only what is
missing, and a run with other settings never reuses them. Sized for 2 shared CPU cores
(torch.set_num_threads(1)).

    python benchmarks/generalization_digits.py                       # all four (~1-2 h on 2 cores)
    python benchmarks/generalization_digits.py --only metrics        # one study
    python benchmarks/generalization_digits.py --quick               # smoke run into results/quick/
    python benchmarks/generalization_digits.py --replot              # redraw figures from the JSON

Figures written to the default results folder are also copied to docs/img/ for the docs page.

Students: the image students of the MtoG study (`pfd.analysis.students.EnsembleDSMTrainer`,
EDM-preconditioned MLP denoisers on the flattened 8x8 images, trained to a loss plateau with a
step cap; one ensemble per width holds every (N, seed) student the studies need), the package's
`training_dynamics` (one `DSMTrainer` per run, evaluated along training) for the dynamics, and
its trajectory students (`pfd.distill`) for the distillation.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pfd
from pfd.analysis import (
    all_baselines,
    bias_variance,
    data_copying_ct,
    detect_features,
    generalization_errors,
    reference_maps,
)
from pfd.analysis._runs import read_records, train_set
from pfd.analysis.students import EnsembleDenoiser
from pfd.analytic.gmm import GaussianMixture
from pfd.maps import CachedMap
from pfd.noise import canonical_noise, derive_seed
from pfd.report import append_jsonl, format_table, write_json

PARTS = ("bias-variance", "dynamics", "distill", "metrics")

ENSEMBLE_TRAIN: dict[str, Any] = {
    "lr": 1e-3, "batch_size": 256, "p_mean": -1.2, "p_std": 1.2, "p_uniform": 0.5, "sigma_min": 0.002,
    "sigma_max": 80.0, "ema": 0.999, "warmup": 200, "check_every": 500, "patience": 3, "tol": 0.005,
    "lr_decay": 0.3, "max_decays": 2, "min_steps": 2000, "max_steps": 40000, "n_check": 1024,
}

FULL: dict[str, Any] = {
    "n_eval": 2048, "eval_seed": 0, "depth": 3, "steps": 3000, "lr": 2e-3, "batch_size": 256,
    "train": {"max_steps": 3000, "min_steps": 2000, "check_every": 500},
    "bias_variance": {"n_trains": [16, 64, 256, 1024], "widths": [32, 128], "k": 5},
    "dynamics": {"n_trains": [64, 256, 1024], "seeds": [0, 1, 2], "width": 128, "steps": 4000, "eval_steps": 250,
                 "n_eval": 1024},
    "distill": {"n_trains": [16, 64, 256, 1024], "width": 128, "seed": 0, "segments": [1, 4], "hidden": 128,
                "student_depth": 2, "steps": 3000, "n_pairs": 4096, "substeps": 32, "t_min_sigma": 0.002,
                "t_max_sigma": 80.0},
    "metrics": {"n_trains": [16, 32, 64, 128, 256, 512, 1024], "width": 128, "seed": 0, "n_test": 2048,
                "kid_subsets": 50},
}

QUICK: dict[str, Any] = {
    "n_eval": 128, "eval_seed": 0, "depth": 2, "steps": 30, "lr": 2e-3, "batch_size": 64,
    "train": {"max_steps": 40, "min_steps": 20, "check_every": 10, "warmup": 5, "n_check": 64, "batch_size": 64},
    "bias_variance": {"n_trains": [8, 32], "widths": [8, 16], "k": 3},
    "dynamics": {"n_trains": [8, 32], "seeds": [0, 1], "width": 16, "steps": 40, "eval_steps": 10, "n_eval": 64},
    "distill": {"n_trains": [8, 32], "width": 16, "seed": 0, "segments": [1, 2], "hidden": 16, "student_depth": 1,
                "steps": 30, "n_pairs": 128, "substeps": 8, "t_min_sigma": 0.002, "t_max_sigma": 80.0},
    "metrics": {"n_trains": [8, 16, 32, 64, 128], "width": 16, "seed": 0, "n_test": 128, "kid_subsets": 5},
}


def flat_teacher(teacher: GaussianMixture) -> GaussianMixture:
    """The same mixture with event shape (d,): the MLP students see flattened images."""
    return GaussianMixture(teacher.weights, teacher.means, teacher.covs)


def _fingerprint(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Study:
    """Shared state: teacher, settings, caches of trained students and of the teacher's map."""

    def __init__(self, teacher: GaussianMixture, cfg: dict[str, Any], out: Path, teacher_name: str,
                 progress: bool = True, plot: bool = True) -> None:
        self.teacher = teacher
        self.cfg = cfg
        self.out = out
        self.runs = out / "digits_runs"
        (self.runs / "students").mkdir(parents=True, exist_ok=True)
        self.teacher_name = teacher_name
        self.teacher_id = _fingerprint(teacher.to_dict())
        self.progress = progress
        self.plot = plot
        self._tmap: CachedMap | None = None
        self._ens: dict[int, tuple[Any, dict[tuple[int, int], int], list[dict[str, Any]]]] = {}

    @property
    def tmap(self) -> CachedMap:
        if self._tmap is None:
            self._tmap = CachedMap(self.teacher.ode_map())
        return self._tmap

    def members(self, width: int) -> list[tuple[int, int]]:
        """Every (N, seed) student of this width that some study needs: one ensemble trains them all."""
        c = self.cfg
        need: set[tuple[int, int]] = set()
        bv = c["bias_variance"]
        if width in bv["widths"]:
            need |= {(n, j) for n in bv["n_trains"] for j in range(bv["k"])}
        for part in ("metrics", "distill"):
            if width == c[part]["width"]:
                need |= {(n, c[part]["seed"]) for n in c[part]["n_trains"]}
        return sorted(need)

    def train_settings(self) -> dict[str, Any]:
        """EnsembleDSMTrainer settings: pinned here (not the MtoG sweep's defaults, which may
        change), so a rerun reproduces and resumes the committed students."""
        return {**ENSEMBLE_TRAIN, **self.cfg.get("train", {})}

    def ensemble(self, width: int) -> tuple[Any, dict[tuple[int, int], int], list[dict[str, Any]]]:
        """The trained ensemble of all students of ``width`` (cached on disk; a lock keeps two
        processes from training the same one), the member index of each (N, seed), per-member stats."""
        import fcntl

        from pfd.analysis.students import EnsembleDSMTrainer

        if width in self._ens:
            return self._ens[width]
        members = self.members(width)
        if not members:
            raise ValueError(f"no study needs students of width {width}")
        train = self.train_settings()
        key = _fingerprint([self.teacher_id, width, self.cfg["depth"], members, train])
        path = self.runs / "students" / f"ensemble_w{width}_{key}.pt"
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            datasets = [train_set(self.teacher, n, s) for n, s in members]
            seeds = [int(derive_seed(s, 7, n) % (2**31)) for n, s in members]
            tr = EnsembleDSMTrainer(datasets, seeds, arch="mlp", width=width, depth=self.cfg["depth"], noise_seed=0,
                                    **train)
            if path.exists():
                state = torch.load(path, weights_only=False)
                tr.ema_model.load_state_dict(state["ema"])
                stats = state["stats"]
            else:
                t0 = time.perf_counter()
                stats = tr.train(progress=self.progress)
                seconds = time.perf_counter() - t0
                for rec in stats:
                    rec["ensemble_train_seconds"] = seconds
                from pfd._train import atomic_torch_save

                atomic_torch_save({"ema": tr.ema_model.state_dict(), "stats": stats, "members": members}, path)
                if self.progress:
                    print(f"  trained width {width}: {len(members)} students in one ensemble, steps "
                          f"{min(r['steps'] for r in stats)}..{max(r['steps'] for r in stats)}, {seconds:.0f} s",
                          flush=True)
        out = (tr, {m: i for i, m in enumerate(members)}, stats)
        self._ens[width] = out
        return out

    def student(self, n_train: int, seed: int, width: int) -> tuple[Any, Any, dict[str, Any]]:
        """(map, denoiser, info) of the DSM student of training set ``seed`` (N points) and width."""
        tr, index, stats = self.ensemble(width)
        r = index[(n_train, seed)]
        return tr.ode_map(r), tr.ema_model.member(r), {"n_params": tr.n_params, **stats[r]}

    def records(self, name: str, key_fields: tuple[str, ...]) -> tuple[Path, dict[tuple, dict[str, Any]]]:
        path = self.runs / f"{name}.jsonl"
        return path, read_records(path, key_fields)

    def base_config(self) -> dict[str, Any]:
        c = self.cfg
        return {"teacher": self.teacher_name, "teacher_fingerprint": self.teacher_id, "dim": self.teacher.dim,
                "student": "pfd.analysis.students.EnsembleDSMTrainer, arch mlp (EDM-preconditioned MLP on the "
                           "flattened 8x8 images), one ensemble per width over every (N, seed) the studies need",
                "depth": c["depth"], "train": self.train_settings(),
                "steps_rule": "plateau stopping rule of EnsembleDSMTrainer, capped at train.max_steps; per-student "
                              "steps and stopped_by are in the rows",
                "n_eval": c["n_eval"], "eval_seed": c["eval_seed"], "solver": {"solver": "heun", "steps": 18},
                "torch_threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- 1. bias-variance


def run_bias_variance(st: Study) -> dict[str, Any]:
    c, bv = st.cfg, st.cfg["bias_variance"]
    k, n_eval, eval_seed = bv["k"], c["n_eval"], c["eval_seed"]
    path, done = st.records("bias_variance", ("fingerprint",))
    rows = []
    for n_train in bv["n_trains"]:
        models: list[tuple[str, int | None]] = [("students", w) for w in bv["widths"]] + [("empirical", None)]
        for kind, width in models:
            fp = _fingerprint([st.teacher_id, kind, n_train, width, k, n_eval, eval_seed,
                               None if kind == "empirical" else [c["depth"], st.train_settings(), st.members(width)]])
            if (fp,) in done:
                rows.append(done[(fp,)])
                continue
            t0 = time.perf_counter()
            info: dict[str, Any] = {}
            if kind == "students":
                got = [st.student(n_train, j, width) for j in range(k)]
                maps = [g[0] for g in got]
                n_params = got[0][2]["n_params"]
                info = {"steps": [g[2]["steps"] for g in got], "stopped_by": [g[2]["stopped_by"] for g in got]}
            else:
                maps = [GaussianMixture.empirical(train_set(st.teacher, n_train, j)).ode_map() for j in range(k)]
                n_params = None
            res = bias_variance(maps, st.tmap, n=n_eval, seed=eval_seed)
            rec = {"fingerprint": fp, "n_train": n_train, "model": kind, "width": width, "n_params": n_params,
                   **res.to_dict(), **info, "seconds": time.perf_counter() - t0}
            append_jsonl(path, rec)
            rows.append(rec)
            if st.progress:
                print(f"  bias-variance N={n_train} {kind} w={width}: bias2 {res.bias2:.4g} var {res.var:.4g} "
                      f"(plug-in {res.bias2_plugin:.4g} / {res.var_plugin:.4g}), mean E_gen^2 {res.mean_gen2:.4g}",
                      flush=True)
    params = {str(w): EnsembleDenoiser((st.teacher.dim,), width=w, depth=c["depth"]).n_params for w in bv["widths"]}
    out = {"config": {**st.base_config(), "n_trains": bv["n_trains"], "widths": bv["widths"], "params": params,
                      "k": k, "seeds": list(range(k)),
                      "estimator": "unbiased: var = K/(K-1) var_plugin, bias2 = bias2_plugin - var/K",
                      "ci95": "over the noise sample (normal); ci95_students: leave-one-student-out jackknife (t, K-1)"},
           "rows": rows, "complete": len(rows) == len(bv["n_trains"]) * (len(bv["widths"]) + 1)}
    write_json(st.out / "bias_variance_digits.json", out)
    if st.plot:
        plot_bias_variance(out, st.out / "bias_variance_digits.png")
    table = [{"N": r["n_train"], "model": r["model"] if r["width"] is None else f"w{r['width']} ({r['n_params']})",
              "E_bias²": r["bias2"], "jk CI": _fmt_ci(r.get("ci95_students", {}).get("bias2")),
              "E_var": r["var"], "jk CI ": _fmt_ci(r.get("ci95_students", {}).get("var")),
              "plug-in b²/var": f"{r['bias2_plugin']:.3g}/{r['var_plugin']:.3g}", "mean E_gen²": r["mean_gen2"],
              "bias share": r["bias_share"]} for r in rows]
    print("\nBias-variance on the digits teacher (unbiased; K students)")
    print(format_table(table, list(table[0])))
    return out


def _fmt_ci(ci: Any) -> str:
    return "" if not ci else f"[{ci[0]:.3g}, {ci[1]:.3g}]"


def plot_bias_variance(res: dict[str, Any], path: Path) -> None:
    from pfd.analysis.plots import _plt, _save

    plt = _plt()
    models = [("students", w) for w in res["config"]["widths"]] + [("empirical", None)]
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), sharey=True)
    for ax, (kind, width) in zip(np.atleast_1d(axes), models, strict=True):
        rs = sorted((r for r in res["rows"] if r["model"] == kind and r["width"] == width), key=lambda r: r["n_train"])
        if not rs:
            continue
        ns = [r["n_train"] for r in rs]
        for field, colour, label in (("bias2", "C0", "E_bias² (unbiased)"), ("var", "C1", "E_var (unbiased)"),
                                     ("mean_gen2", "k", "mean E_gen²")):
            ys = [r[field] for r in rs]
            cis = [r.get("ci95_students", {}).get(field) for r in rs]
            if all(ci is not None for ci in cis):
                lo = [y - ci[0] for y, ci in zip(ys, cis, strict=True)]
                hi = [ci[1] - y for y, ci in zip(ys, cis, strict=True)]
                ax.errorbar(ns, ys, yerr=[lo, hi], color=colour, marker="o", capsize=3, label=label)
            else:
                ax.plot(ns, ys, color=colour, marker="o", label=label)
        ax.plot(ns, [r["bias2_plugin"] for r in rs], color="C0", ls=":", label="E_bias² plug-in")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training set size N")
        title = "empirical (memorizing) models" if kind == "empirical" else f"DSM students, width {width} " \
            f"(|θ| = {res['config']['params'][str(width)]:,})"
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes = np.atleast_1d(axes)
    axes[0].set_ylabel("squared PFD (pixels², 64-D)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Bias–variance on the digits teacher, K = {res['config']['k']} training sets per point "
                 "(error bars: jackknife 95% CI over students)", fontsize=9)
    _save(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------- 2. dynamics


def _fixed_dsm_loss(net: Any, points: torch.Tensor, sig: dict[str, Any], seed: int, draws: int = 4) -> float:
    """EDM-weighted DSM loss of one member on ``points`` with fixed, seeded noise levels and noise
    (the training noise-level distribution), so values are comparable across steps."""
    from pfd.analysis.students import sample_sigma

    g = torch.Generator().manual_seed(derive_seed(seed, 0x1055) % (2**63))
    y = points.to(torch.float32).repeat(draws, 1)
    sigma = sample_sigma((y.shape[0],), g, **sig)
    eps = torch.randn(y.shape, generator=g)
    sd = float(net.ensemble.sigma_data[net.r])
    weight = (sigma * sigma + sd * sd) / (sigma * sd) ** 2
    with torch.no_grad():
        out = net(y + sigma[:, None] * eps, sigma)
    return float((weight * (out - y).pow(2).mean(1)).mean())


def _trainer_state(tr: Any) -> dict[str, Any]:
    return {"dict": {k: v for k, v in tr.__dict__.items() if k != "gen"}, "gen": tr.gen.get_state()}


def run_dynamics(st: Study) -> dict[str, Any]:
    """One ensemble holds every (N, seed) run; it is trained in chunks of ``eval_steps`` steps with a
    fixed budget (stopping rule off: constant learning rate after warm-up, so the curves of all
    runs are comparable), and every member is scored after each chunk."""
    from pfd._train import atomic_torch_save
    from pfd.analysis.students import EnsembleDSMTrainer

    c, dy = st.cfg, st.cfg["dynamics"]
    members = [(n, s) for n in dy["n_trains"] for s in dy["seeds"]]
    train = {**st.train_settings(), "min_steps": dy["steps"], "max_steps": dy["eval_steps"], "patience": 10**9}
    fp = _fingerprint([st.teacher_id, members, dy["width"], c["depth"], train, dy["steps"], dy["n_eval"],
                       c["eval_seed"]])
    path, done = st.records("dynamics", ("fingerprint", "step"))
    datasets = [train_set(st.teacher, n, s) for n, s in members]
    heldout = st.teacher.sample(1024 if dy["n_eval"] >= 1024 else 128, seed=derive_seed(0, 41) % (2**62))
    tr = EnsembleDSMTrainer(datasets, [int(derive_seed(s, 7, n) % (2**31)) for n, s in members], arch="mlp",
                            width=dy["width"], depth=c["depth"], noise_seed=0, **train)
    ckpt = st.runs / f"dynamics_{fp}.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        tr.__dict__.update(state["dict"])
        tr.gen.set_state(state["gen"])
    refs = [reference_maps(st.tmap, d) for d in datasets]
    t0 = time.perf_counter()
    while True:
        step = tr.step
        if (fp, step) not in done:
            rows = []
            for r, (n_train, seed) in enumerate(members):
                net = tr.ema_model.member(r)
                err = generalization_errors(tr.ode_map(r), None, None, n=dy["n_eval"], seed=c["eval_seed"],
                                            references=refs[r])
                rows.append({"n_train": n_train, "seed": seed, **err.to_dict(),
                             "train_loss": _fixed_dsm_loss(net, datasets[r], tr.sig, seed),
                             "heldout_loss": _fixed_dsm_loss(net, heldout, tr.sig, seed)})
            rec = {"fingerprint": fp, "step": step, "rows": rows, "seconds": time.perf_counter() - t0}
            append_jsonl(path, rec)
            done[(fp, step)] = rec
            if st.progress:
                print(f"  dynamics step {step}: E_gen " + " ".join(f"{r['e_gen']:.3g}" for r in rows), flush=True)
        if step >= dy["steps"]:
            break
        tr.max_steps = step + dy["eval_steps"]
        tr.active[:] = True  # the chunk cap froze every member; continue them (optimizer, EMA, RNG state kept)
        tr._act_dev.fill_(1.0)
        tr.train()
        atomic_torch_save(_trainer_state(tr), ckpt)
    steps_done = sorted(k[1] for k in done if k[0] == fp)
    runs = []
    for r, (n_train, seed) in enumerate(members):
        rows = [{"step": k, **done[(fp, k)]["rows"][r]} for k in steps_done]
        eg = np.array([row["e_gen"] for row in rows])
        from pfd.analysis.dynamics import jitter

        tol = max(2.0 * max(row["e_gen_stderr"] for row in rows), 2.0 * jitter(eg))
        emp = generalization_errors(refs[r].empirical, None, None, n=dy["n_eval"], seed=c["eval_seed"],
                                    references=refs[r]).e_gen.value
        runs.append({"n_train": n_train, "seed": seed, "rows": rows, "e_gen_empirical": emp,
                     "features": detect_features([row["step"] for row in rows], eg, tol)})
        m = runs[-1]["features"]["minimum"]
        if st.progress:
            print(f"  dynamics N={n_train} seed={seed}: min E_gen {m['value']:.4g} at step {m['epoch']} "
                  f"(rise after {m['rise_after']:.3g}, tol {tol:.3g}), "
                  f"{len(runs[-1]['features']['double_descent'])} double-descent episode(s)", flush=True)
    summary = []
    for n_train in dy["n_trains"]:
        rs = [r for r in runs if r["n_train"] == n_train]
        if len(rs) < 2:
            continue
        steps = [row["step"] for row in rs[0]["rows"]]
        curves = np.array([[row["e_gen"] for row in r["rows"]] for r in rs])
        spread = float(np.median(curves.std(0, ddof=1)))  # seed-to-seed sd of E_gen, median over the curve
        per_seed = []
        for r in rs:
            ep = [row["step"] for row in r["rows"]]
            eg = [row["e_gen"] for row in r["rows"]]
            own = r["features"]
            at_spread = detect_features(ep, eg, max(own["tol"], spread))
            per_seed.append({
                "seed": r["seed"], "tol_own": own["tol"], "min_step": ep[own["minimum"]["index"]],
                "min_e_gen": own["minimum"]["value"], "final_e_gen": eg[-1], "rise_after_min": own["minimum"]["rise_after"],
                "early_minimum_own_tol": own["minimum"]["early"], "double_descent_own_tol": len(own["double_descent"]),
                "early_minimum_at_seed_spread": at_spread["minimum"]["early"],
                "double_descent_at_seed_spread": len(at_spread["double_descent"]),
                "e_mem_first": r["rows"][0]["e_mem"], "e_mem_final": r["rows"][-1]["e_mem"],
                "heldout_loss_min_step": ep[int(np.argmin([row["heldout_loss"] for row in r["rows"]]))],
                "train_loss_final": r["rows"][-1]["train_loss"], "heldout_loss_final": r["rows"][-1]["heldout_loss"],
            })
        mean_curve = curves.mean(0)
        summary.append({"n_train": n_train, "seed_spread_e_gen": spread, "steps": steps,
                        "mean_e_gen": mean_curve.tolist(), "e_gen_empirical": rs[0]["e_gen_empirical"],
                        "mean_min_step": steps[int(np.argmin(mean_curve))], "mean_min": float(mean_curve.min()),
                        "mean_final": float(mean_curve[-1]), "per_seed": per_seed})
    out = {"config": {**st.base_config(), "n_trains": dy["n_trains"], "seeds": dy["seeds"], "width": dy["width"],
                      "student": "pfd.analysis.students.EnsembleDSMTrainer, arch mlp: one ensemble holding every "
                                 "(N, seed) run, trained in chunks and scored (EMA weights) after each",
                      "train": train, "steps_rule": "fixed budget (stopping rule off: patience 1e9)",
                      "steps": dy["steps"], "eval_every_steps": dy["eval_steps"], "n_eval": dy["n_eval"],
                      "tolerance": "own: max(2 x largest E_gen stderr, 2 x jitter of the curve); at_seed_spread: "
                                   "max(own, median over the curve of the seed-to-seed sd of E_gen)"},
           "runs": runs, "summary": summary, "complete": len(runs) == len(dy["n_trains"]) * len(dy["seeds"])}
    write_json(st.out / "dynamics_digits.json", out)
    if st.plot:
        plot_dynamics(out, st.out / "dynamics_digits.png")
    table = [{"N": s["n_train"], "seed": p["seed"], "min E_gen": p["min_e_gen"], "at step": p["min_step"],
              "final": p["final_e_gen"], "rise": p["rise_after_min"], "tol": p["tol_own"],
              "seed sd": s["seed_spread_e_gen"], "early min (own/spread)":
              f"{p['early_minimum_own_tol']}/{p['early_minimum_at_seed_spread']}",
              "DD (own/spread)": f"{p['double_descent_own_tol']}/{p['double_descent_at_seed_spread']}",
              "E_mem first→final": f"{p['e_mem_first']:.3g}→{p['e_mem_final']:.3g}",
              "held-out loss min at": p["heldout_loss_min_step"]}
             for s in summary for p in s["per_seed"]]
    if table:
        print("\nTraining dynamics on the digits teacher")
        print(format_table(table, list(table[0])))
    return out


def plot_dynamics(res: dict[str, Any], path: Path) -> None:
    from pfd.analysis.plots import _plt, _save

    plt = _plt()
    ns = res["config"]["n_trains"]
    fig, axes = plt.subplots(2, len(ns), figsize=(4.2 * len(ns), 6.4), squeeze=False)
    for j, n_train in enumerate(ns):
        ax, ax2 = axes[0, j], axes[1, j]
        for i, r in enumerate(sorted((r for r in res["runs"] if r["n_train"] == n_train), key=lambda r: r["seed"])):
            steps = [row["step"] for row in r["rows"]]
            ax.plot(steps, [row["e_gen"] for row in r["rows"]], color=f"C{i}", label=f"E_gen seed {r['seed']}")
            ax.plot(steps, [row["e_mem"] for row in r["rows"]], color=f"C{i}", ls="--", label=f"E_mem seed {r['seed']}")
            ax2.plot(steps, [row["train_loss"] for row in r["rows"]], color=f"C{i}", ls="--",
                     label=f"train seed {r['seed']}")
            ax2.plot(steps, [row["heldout_loss"] for row in r["rows"]], color=f"C{i}", label=f"held-out seed {r['seed']}")
            if i == 0:
                ax.axhline(r["e_gen_empirical"], color="grey", ls=":", label="E_gen of the memorizer")
        ax.set_title(f"N = {n_train}", fontsize=9)
        if j == 0:
            ax.set_ylabel("PFD")
            ax2.set_ylabel("DSM loss (fixed draws)")
        ax2.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax2.grid(alpha=0.3)
        if j == 0:
            ax.legend(fontsize=6, ncol=2)
            ax2.legend(fontsize=6, ncol=2)
    fig.suptitle(f"Training dynamics on the digits teacher (width {res['config']['width']}; solid E_gen / held-out, "
                 "dashed E_mem / train)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------- 3. distillation


def _ve_segment_sigmas(grid_t: torch.Tensor, process: Any, substeps: int) -> list[torch.Tensor]:
    """Per segment of an OU time grid, a Karras sub-grid in VE sigma from its start to its end."""
    from pfd.schedules import karras_sigmas

    sig = [float(process.sigma_ve(float(t))) for t in grid_t]
    return [karras_sigmas(substeps + 1, lo, hi) for hi, lo in itertools.pairwise(sig)]


def dsm_trajectory_pairs(net: Any, dim: int, grid_t: torch.Tensor, n: int, seed: int, substeps: int) -> tuple:
    """Training pairs (X, Y) (K, n, d) for a trajectory student from the DSM student's own PF-ODE:
    trajectories from fresh noise, integrated (Heun, ``substeps`` Karras steps per segment) in
    EDM coordinates and stored in OU coordinates x_ou = alpha_t x_ve at the grid times."""
    from pfd.schedules import get_process
    from pfd.solvers import get_solver

    proc = get_process("ou")
    z = canonical_noise(n, (dim,), seed=derive_seed(seed, 0xD157) % (2**62))

    def denoise(x: torch.Tensor, s: float) -> torch.Tensor:
        with torch.no_grad():
            return net(x.float(), torch.full((x.shape[0],), s)).double()

    sub = _ve_segment_sigmas(grid_t, proc, substeps)
    x = float(sub[0][0]) * z
    states = [x]
    for sig in sub:
        x = get_solver("heun").integrate(denoise, x, sig)
        states.append(x)
    alphas = [float(proc.alpha(float(t))) for t in grid_t]
    xs = torch.stack([a * s for a, s in zip(alphas[:-1], states[:-1], strict=True)])
    ys = torch.stack([a * s for a, s in zip(alphas[1:], states[1:], strict=True)])
    return xs, ys


def run_distill(st: Study) -> dict[str, Any]:
    from pfd.distill import TRAJECTORY_TRAIN, train_trajectory_student
    from pfd.schedules import get_process, time_grid

    c, ds = st.cfg, st.cfg["distill"]
    proc = get_process("ou")
    t_max = float(proc.t_from_sigma_ve(ds["t_max_sigma"]))
    t_min = float(proc.t_from_sigma_ve(ds["t_min_sigma"]))
    path, done = st.records("distill", ("fingerprint",))
    rows = []
    n_eval, eval_seed = c["n_eval"], c["eval_seed"]
    for n_train in ds["n_trains"]:
        smap0, net, info = st.student(n_train, ds["seed"], ds["width"])
        refs = reference_maps(st.tmap, train_set(st.teacher, n_train, ds["seed"]))
        dsm_map = CachedMap(smap0)
        for k in [0, *ds["segments"]]:  # 0 = the DSM teacher itself
            fp = _fingerprint([st.teacher_id, n_train, ds["seed"], ds["width"], c["depth"], st.train_settings(),
                               st.members(ds["width"]), k, ds["hidden"], ds["student_depth"], ds["steps"],
                               ds["n_pairs"], ds["substeps"], n_eval, eval_seed])
            if (fp,) in done:
                rows.append(done[(fp,)])
                continue
            t0 = time.perf_counter()
            extra: dict[str, Any] = {}
            if k == 0:
                smap, kind = dsm_map, "DSM teacher (Heun 18, 35 NFE)"
                extra = {"steps": info["steps"], "stopped_by": info["stopped_by"]}
            else:
                grid = time_grid(k, t_min, t_max, "edm", "ou")
                xs, ys = dsm_trajectory_pairs(net, st.teacher.dim, grid, ds["n_pairs"], ds["seed"], ds["substeps"])
                train = TRAJECTORY_TRAIN.replace(width=ds["hidden"], depth=ds["student_depth"], train_steps=ds["steps"],
                                                 progress=False)
                stu, hist = train_trajectory_student(st.teacher, grid, process="ou", seed=ds["seed"], pairs=(xs, ys),
                                                     config=train)
                smap, kind = stu.as_map(), f"{k}-step trajectory student"
                fid = pfd.distance(smap, dsm_map, n=n_eval, seed=eval_seed, progress=False)
                extra = {"pfd_to_dsm_teacher": fid.value, "pfd_to_dsm_teacher_ci95": list(fid.ci95),
                         "final_loss_per_segment": hist["final_loss_per_segment"], "student_params": stu.n_params,
                         "grid_sigma_ve": [float(proc.sigma_ve(float(t))) for t in grid]}
            err = generalization_errors(smap, None, None, n=n_eval, seed=eval_seed, references=refs)
            emp = generalization_errors(refs.empirical, None, None, n=n_eval, seed=eval_seed, references=refs).e_gen
            rec = {"fingerprint": fp, "n_train": n_train, "segments": k, "kind": kind, **err.to_dict(),
                   "e_gen_empirical": emp.value, "e_mem_rel": err.e_mem.value / emp.value,
                   "e_gen_rel": err.e_gen.value / emp.value, **extra, "seconds": time.perf_counter() - t0}
            append_jsonl(path, rec)
            rows.append(rec)
            if st.progress:
                print(f"  distill N={n_train} {kind}: E_gen {err.e_gen.value:.4g} E_mem {err.e_mem.value:.4g}"
                      + (f" (PFD to its DSM teacher {extra['pfd_to_dsm_teacher']:.4g})" if k else ""), flush=True)
    out = {"config": {**st.base_config(), "n_trains": ds["n_trains"], "dsm_width": ds["width"], "dsm_seed": ds["seed"],
                      "segments": ds["segments"], "trajectory_student": {
                          "hidden": ds["hidden"], "depth": ds["student_depth"], "steps": ds["steps"], "batch_size": 256,
                          "lr": 2e-3, "process": "ou", "grid": "edm (Karras in sigma_VE)",
                          "sigma_ve_range": [ds["t_min_sigma"], ds["t_max_sigma"]],
                          "pairs": f"{ds['n_pairs']} trajectories of the DSM student's PF-ODE from fresh noise, "
                                   f"Heun with {ds['substeps']} Karras sub-steps per segment"}},
           "rows": rows, "complete": len(rows) == len(ds["n_trains"]) * (1 + len(ds["segments"]))}
    write_json(st.out / "distill_digits.json", out)
    if st.plot:
        plot_distill(out, st.out / "distill_digits.png")
    table = [{"N": r["n_train"], "model": r["kind"], "E_gen": r["e_gen"], "E_gen CI": _fmt_ci(r["e_gen_ci95"]),
              "E_mem": r["e_mem"], "E_mem CI": _fmt_ci(r["e_mem_ci95"]), "E_mem/E_gen(emp)": r["e_mem_rel"],
              "PFD to DSM teacher": r.get("pfd_to_dsm_teacher")} for r in rows]
    print("\nDistilled students on the digits teacher")
    print(format_table(table, list(table[0])))
    return out


def plot_distill(res: dict[str, Any], path: Path) -> None:
    from pfd.analysis.plots import _plt, _save

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for i, k in enumerate([0, *res["config"]["segments"]]):
        rs = sorted((r for r in res["rows"] if r["segments"] == k), key=lambda r: r["n_train"])
        if not rs:
            continue
        ns = [r["n_train"] for r in rs]
        label = "DSM teacher" if k == 0 else f"{k}-step distilled"
        for ax, f in zip(axes, ("e_gen", "e_mem"), strict=True):
            lo = [r[f] - r[f"{f}_ci95"][0] for r in rs]
            hi = [r[f"{f}_ci95"][1] - r[f] for r in rs]
            ax.errorbar(ns, [r[f] for r in rs], yerr=[lo, hi], marker="o", color=f"C{i}", capsize=3, label=label)
    rs = sorted((r for r in res["rows"] if r["segments"] == 0), key=lambda r: r["n_train"])
    if rs:
        axes[0].plot([r["n_train"] for r in rs], [r["e_gen_empirical"] for r in rs], "k:", label="memorizer's E_gen")
    for ax, title in zip(axes, ("E_gen = PFD(student, digits teacher)", "E_mem = PFD(student, empirical model)"),
                         strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training set size N of the DSM teacher")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PFD")
    axes[0].legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------- 4. metrics side by side

METRIC_COLUMNS = ("e_gen", "e_mem", "memorization_ratio", "frechet", "mmd2", "kid", "precision", "recall", "density",
                  "coverage", "ct", "ct_meehan2020")


def run_metrics(st: Study) -> dict[str, Any]:
    c, me = st.cfg, st.cfg["metrics"]
    path, done = st.records("metrics", ("fingerprint",))
    n_eval, eval_seed = c["n_eval"], c["eval_seed"]
    test = st.teacher.sample(me["n_test"], seed=987654)
    z = canonical_noise(n_eval, (st.teacher.dim,), seed=eval_seed)
    rows = []
    for n_train in [*me["n_trains"], None]:
        models = ["teacher"] if n_train is None else ["student", "empirical"]
        for kind in models:
            fp = _fingerprint([st.teacher_id, n_train, kind, me["width"], me["seed"], c["depth"], st.train_settings(),
                               st.members(me["width"]) if kind == "student" else None, n_eval, eval_seed, me["n_test"],
                               me["kid_subsets"]])
            if (fp,) in done:
                rows.append(done[(fp,)])
                continue
            t0 = time.perf_counter()
            train_n = n_train if n_train is not None else max(me["n_trains"])
            data = train_set(st.teacher, train_n, me["seed"])
            refs = reference_maps(st.tmap, data)
            info = {}
            if kind == "student":
                smap0, _, sinfo = st.student(n_train, me["seed"], me["width"])
                smap = CachedMap(smap0)
                info = {"steps": sinfo["steps"], "stopped_by": sinfo["stopped_by"], "n_params": sinfo["n_params"]}
            elif kind == "empirical":
                smap = refs.empirical
            else:
                smap = st.tmap
            err = generalization_errors(smap, None, None, n=n_eval, seed=eval_seed, references=refs)
            emp = generalization_errors(refs.empirical, None, None, n=n_eval, seed=eval_seed, references=refs).e_gen
            samples = torch.cat([smap(z[i:i + 1024]) for i in range(0, n_eval, 1024)])  # the batches PFD saw
            base = all_baselines(samples, data, test, seed=0, kid_subsets=me["kid_subsets"])
            cells = base["ct_cells"]
            try:
                ct_a = data_copying_ct(samples, data, test, n_cells=cells, seed=0, convention="meehan2020")["ct"]
            except ValueError:  # no cell with more than min_count samples: undefined in that convention
                ct_a = math.nan
            rec = {"fingerprint": fp, "n_train": train_n, "model": kind, **err.to_dict(), "e_gen_empirical": emp.value,
                   "e_mem_rel": err.e_mem.value / emp.value, **base, "ct_meehan2020": ct_a, **info,
                   "seconds": time.perf_counter() - t0}
            append_jsonl(path, rec)
            rows.append(rec)
            if st.progress:
                print(f"  metrics N={train_n} {kind}: E_gen {err.e_gen.value:.4g} E_mem {err.e_mem.value:.4g} "
                      f"mem.ratio {base['memorization_ratio']:.3g} FD {base['frechet']:.4g} KID {base['kid']:.3g} "
                      f"C_T {base['ct']:.3g}", flush=True)
    tracking = _tracking(rows)
    out = {"config": {**st.base_config(), "n_trains": me["n_trains"], "width": me["width"], "seed": me["seed"],
                      "n_test": me["n_test"], "test": "fresh teacher samples (seed 987654)",
                      "kid": {"subset_size": "min(1000, n_samples, n_test)", "subsets": me["kid_subsets"],
                              "kernel": "(x.y/d + 1)^3"},
                      "ct": "k-means cells of the training set, min(10, N // 2) cells; ct_meehan2020: "
                            "convention of the authors' released code",
                      "teacher_row": f"the teacher's own map, training set = the N = {max(me['n_trains'])} set"},
           "rows": rows, "tracking": tracking,
           "complete": len(rows) == 2 * len(me["n_trains"]) + 1}
    write_json(st.out / "metrics_digits.json", out)
    if st.plot:
        plot_metrics(out, st.out / "metrics_digits.png")
    table = [{"N": r["n_train"], "model": r["model"], **{k: r[k] for k in METRIC_COLUMNS}} for r in rows]
    print("\nPFD beside the sample metrics on the digits teacher (same samples)")
    print(format_table(table, ["N", "model", *METRIC_COLUMNS]))
    print("\nDoes each metric separate the student from the memorizer of the same training set, per N?")
    print(format_table(tracking, list(tracking[0])) if tracking else "(no rows)")
    return out


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _tracking(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per metric: Spearman rank correlation with log N over the students, and the gap between the
    student and the memorizer of the same training set at the smallest and largest N, relative
    to the metric's range over all rows."""
    from scipy.stats import spearmanr

    stud = sorted((r for r in rows if r["model"] == "student"), key=lambda r: r["n_train"])
    emp = {r["n_train"]: r for r in rows if r["model"] == "empirical"}
    if len(stud) < 3:
        return []
    out = []
    for m in METRIC_COLUMNS:
        vals = [r[m] for r in stud]
        if any(v is None or not math.isfinite(v) for v in vals):
            continue
        rho = spearmanr([r["n_train"] for r in stud], vals).statistic if len(set(vals)) > 1 else math.nan
        allv = [r[m] for r in rows if r[m] is not None and math.isfinite(r[m])]
        scale = (max(allv) - min(allv)) or 1.0
        gaps = [(r[m] - _num(emp[r["n_train"]][m])) / scale for r in stud if r["n_train"] in emp]
        out.append({"metric": m, "spearman_vs_N": float(rho), "student_min_N": vals[0], "student_max_N": vals[-1],
                    "gap_vs_memorizer_min_N": gaps[0] if gaps else None,
                    "gap_vs_memorizer_max_N": gaps[-1] if gaps else None})
    return out


def plot_metrics(res: dict[str, Any], path: Path) -> None:
    from pfd.analysis.plots import _plt, _save

    plt = _plt()
    cols = list(METRIC_COLUMNS)
    ncol = 4
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.7 * nrow), squeeze=False)
    teacher = next((r for r in res["rows"] if r["model"] == "teacher"), None)
    for ax, m in zip(axes.flat, cols, strict=False):
        for kind, style in (("student", "o-"), ("empirical", "s--")):
            rs = sorted((r for r in res["rows"] if r["model"] == kind), key=lambda r: r["n_train"])
            ax.plot([r["n_train"] for r in rs], [_num(r[m]) for r in rs], style,
                    label="DSM student" if kind == "student" else "memorizer (empirical)")
        if teacher is not None:
            ax.axhline(_num(teacher[m]), color="grey", ls=":", label="teacher itself")
        ax.set_xscale("log", base=2)
        ax.set_title(m.replace("_", " "), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("training set size N", fontsize=8)
    fig.suptitle("PFD and sample metrics on the same samples, digits teacher", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------- main

RUNNERS = {"bias-variance": run_bias_variance, "dynamics": run_dynamics, "distill": run_distill,
           "metrics": run_metrics}


def main(argv: list[str] | None = None, *, teacher: GaussianMixture | None = None, out: Path | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run into results/quick/")
    ap.add_argument("--only", choices=PARTS, action="append", help="run this study (repeatable); default: all")
    ap.add_argument("--replot", action="store_true", help="only redraw the figures from the JSON files")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = QUICK if args.quick else FULL
    if out is None:
        out = Path(__file__).parent / "results" / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    default_out = out.resolve() == (Path(__file__).parent / "results").resolve()
    if args.replot:
        plots = {"bias-variance": ("bias_variance", plot_bias_variance), "dynamics": ("dynamics", plot_dynamics),
                 "distill": ("distill", plot_distill), "metrics": ("metrics", plot_metrics)}
        for part in args.only or PARTS:
            stem, fn = plots[part]
            src = out / f"{stem}_digits.json"
            if src.exists():
                fn(json.loads(src.read_text()), out / f"{stem}_digits.png")
        if default_out:
            _copy_figures_to_docs(out)
        return {}
    name = "custom"
    if teacher is None:
        from pfd.analytic import digits_teacher

        teacher, name = digits_teacher(), "digits_teacher(n_components=10, seed=0, reg=1e-3)"
    st = Study(flat_teacher(teacher), cfg, out, name)
    results = {}
    for part in args.only or PARTS:
        t0 = time.perf_counter()
        print(f"== {part}", flush=True)
        results[part] = RUNNERS[part](st)
        print(f"== {part} done in {time.perf_counter() - t0:.0f} s", flush=True)
    if default_out:
        _copy_figures_to_docs(out)
    return results


def _copy_figures_to_docs(out: Path) -> None:
    """The docs page shows copies of the figures (mkdocs serves only files under docs/)."""
    import shutil

    img = Path(__file__).resolve().parents[1] / "docs" / "img"
    img.mkdir(exist_ok=True)
    for stem in ("bias_variance", "dynamics", "distill", "metrics"):
        src = out / f"{stem}_digits.png"
        if src.exists():
            shutil.copyfile(src, img / src.name)


if __name__ == "__main__":
    main()
