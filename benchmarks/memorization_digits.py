"""Do digits students memorize, and why is their E_mem not ~0? (slow; not in CI)

The MtoG sweep on the digits teacher (benchmarks/mtog_digits.py) never saw E_mem / E_gen(memorizer)
near 0 at small N. This study follows small-N students through training and splits E_mem
(:func:`pfd.analysis.memorization_breakdown`) into

* the **copy fraction**: the share of the student's samples that are copies of a training point
  (memorization ratio, d1/d2 < 1/3) -- memorization as a sampler;
* the **basin agreement**: the share of noise the student sends to the same training point as the
  empirical model's PF-ODE does -- memorization as a map;
* E_mem = sqrt(E_same^2 + E_switched^2): the part of E_mem from samples that went to the right
  training point but not onto it, and the part from noise sent to another training point.

Students: the sweep's ensemble trainer and settings (EDM-preconditioned MLPs, log-uniform +
log-normal sigma, EMA 0.999, output clamp [-3, 3] when scored) with the plateau rule off, so the
learning rate stays constant and each student is scored at fixed step counts ("stages").

    python benchmarks/memorization_digits.py               # the committed study (CPU: ~1 h per target on one shared core)
    python benchmarks/memorization_digits.py --quick       # smoke run into results/quick/

Resumable: scored stages are JSONL records keyed by every setting, and the ensemble's trainer state
is checkpointed after every stage (git-ignored); rerun the same command to continue. Writes
results/memorization_digits.json (+ .png) with ``complete: false`` until every stage is scored.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from _fair import mean_ci95  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = ("copy_fraction", "basin_agreement", "e_mem_rel", "e_gen_rel", "e_mem_same_rel", "e_mem_switched_rel")


PROPORTIONS = ("copy_fraction", "basin_agreement")


def _t_ci(vals: list[float], proportion: bool = False) -> tuple[float, list[float]]:
    """Mean and 95% t-interval over seeds (:func:`_fair.mean_ci95`; the half-width is 0 for one
    value); for a ``proportion`` the interval is clipped to [0, 1]."""
    r = mean_ci95(vals)
    m = r["mean"]
    lo, hi = r["ci95"] or [m, m]
    return m, [max(0.0, lo), min(1.0, hi)] if proportion else [lo, hi]


def summarize(rows: list[dict[str, Any]], arms: list[str] | None = None) -> list[dict[str, Any]]:
    """Per (arm, N, stage) of scored ``rows``: the mean and 95% t-interval over seeds of every field
    in ``FIELDS`` (proportions clipped to [0, 1]); arms in the order given (default: as they first
    appear), N and stages ascending. Rows of one (arm, N, stage) may come from several units (e.g.
    extra seeds trained later): they are pooled."""
    order = list(arms) if arms is not None else list(dict.fromkeys(r["arm"] for r in rows))
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["arm"], r["n_train"], r["stage"]), []).append(r)
    summary = []
    for arm, n, st in sorted(groups, key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[1], k[2])):
        sel = groups[(arm, n, st)]
        row: dict[str, Any] = {"arm": arm, "size": sel[0]["size"], "target": sel[0]["target"],
                               "n_params": sel[0]["n_params"], "n_train": n, "stage": st, "seeds": len(sel)}
        for f in FIELDS:
            row[f], row[f + "_ci95"] = _t_ci([r[f] for r in sel], proportion=f in PROPORTIONS)
        summary.append(row)
    return summary


def run_study(sizes: list[str], n_trains: list[int], seeds: list[int], stages: list[int], *, out_dir: Path,
              targets: tuple[str, ...] = ("sample",), n_eval: int = 2048, eval_seed: int = 0,
              train: dict[str, Any] | None = None, device: str = "cpu", routing_ns: tuple[int, ...] = (),
              distill: dict[str, Any] | None = None, final_hook: Any = None,
              progress: bool = True, log=print) -> dict[str, Any]:
    """Train one ensemble per (size, training target) over seeds x N, score every member at every
    stage, and summarise per (arm, N, stage) with 95% t-intervals over seeds. An arm is a size with
    a training target: "sample" (plain DSM) or "posterior" (the exact empirical denoiser as target).
    ``final_hook(arm=, trainer=, members=, data=, settings=, runs_dir=, clamp=)`` is called once per arm
    after its stages, with the trainer at the final stage (None when its state is not at hand)."""
    from pfd._train import atomic_torch_save
    from pfd.analysis import reference_maps
    from pfd.analysis._runkey import check_settings, load_checkpoint
    from pfd.analysis._runs import OnDevice, read_records, run_settings, score_member, settings_key, train_set
    from pfd.analysis.mtog import DEFAULT_TRAIN, parse_size
    from pfd.analysis.students import EnsembleDSMTrainer
    from pfd.analytic import digits_teacher
    from pfd.maps import CachedMap
    from pfd.noise import derive_seed
    from pfd.report import append_jsonl

    stages = sorted(int(s) for s in stages)
    teacher = digits_teacher()
    solver = {"solver": "heun", "steps": 18}
    tmap = CachedMap(OnDevice(teacher.ode_map(**solver), device))
    runs_dir = out_dir / "digits_runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    members = [(int(s), int(n)) for s in seeds for n in n_trains]
    rows: list[dict[str, Any]] = []
    routing: list[dict[str, Any]] = []
    distilled: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    arms = [(size, target) for size in sizes for target in targets]
    for size, target in arms:
        spec = parse_size(size)
        arm = f"{spec['label']} {target}"
        cfg = {**DEFAULT_TRAIN, "min_steps": 10**9, **(train or {}), "target": target}  # plateau rule off: constant lr
        clamp = cfg.pop("clamp", None)
        ref = cfg.pop("lr_ref_width", None)
        if ref is not None:
            cfg["lr"] = cfg["lr"] * min(1.0, math.sqrt(ref / spec["width"]))
        cfg.pop("max_steps", None)
        settings = run_settings(study="memorization", teacher="digits", size=spec["label"], n_trains=list(n_trains),
                                seeds=list(seeds), train=cfg, clamp=clamp, n_eval=n_eval, eval_seed=eval_seed,
                                solver=solver, device=str(device).split(":")[0])
        key = settings_key(settings)
        runs_path = runs_dir / f"memorization_{spec['label'].replace(':', '-')}_{target}.jsonl"  # one file per arm
        done = read_records(runs_path, ("stage", "seed", "n_train"), settings)
        todo = [st for st in stages if any((st, s, n) not in done for s, n in members)]
        rows += [r for (st, _s, _n), r in done.items() if st in stages]
        data = [train_set(teacher, n, s) for s, n in members]
        tr = EnsembleDSMTrainer(data, [int(derive_seed(s, 7, n) % (2**31)) for s, n in members], arch=spec["arch"],
                                width=spec["width"], depth=spec["depth"], device=device, noise_seed=int(seeds[0]),
                                max_steps=stages[0], **cfg)
        ckpt = runs_dir / f"memorization-{key}.pt"
        if ckpt.exists():
            state = load_checkpoint(ckpt)
            check_settings(state.get("settings"), settings, f"checkpoint {ckpt}", "delete it to start over")
            if state["trainer"]["step"] <= (todo[0] if todo else stages[-1]):
                tr.load_state_dict(state["trainer"])
                if todo:
                    log(f"[{arm}] resumed at step {tr.step}")
        for st in stages:
            if not todo or st < todo[0] or (st <= tr.step and st not in todo):
                continue
            if tr.step < st:
                tr.resume(st)
                tr.train(progress=progress)
            loss = tr.check_loss()
            for i, (s, n) in enumerate(members):
                if (st, s, n) in done:
                    continue
                rec = {"stage": st, "seed": s, "n_train": n, "size": spec["label"], "target": target, "arm": arm,
                       "steps": tr.step,
                       "check_loss": loss[i], **score_member(tr, i, data[i], tmap, clamp=clamp, solver=solver,
                                                              n_eval=n_eval, eval_seed=eval_seed, eval_batch=1024,
                                                              device=device),
                       "settings_key": key, "settings": settings}
                ref_gen = rec["e_gen_empirical"]
                rec["e_mem_same_rel"] = rec["e_mem_same_basin"] / ref_gen
                rec["e_mem_switched_rel"] = rec["e_mem_switched"] / ref_gen
                append_jsonl(runs_path, rec)
                rows.append(rec)
                log(f"[{arm}] step {st:6d} N={n:4d} seed {s}: copies {rec['copy_fraction']:.3f} basins "
                    f"{rec['basin_agreement']:.3f} E_mem/E_gen(mem) {rec['e_mem_rel']:.3f} (same "
                    f"{rec['e_mem_same_rel']:.3f}, switched {rec['e_mem_switched_rel']:.3f}) E_gen/E_gen(mem) "
                    f"{rec['e_gen_rel']:.3f}  [{time.perf_counter() - t0:.0f} s]")
            atomic_torch_save({"settings": settings, "trainer": tr.state_dict()}, ckpt)
        last, ready = stages[-1], tr.step == stages[-1]  # records of the final stage are reused; new ones need its state
        if final_hook is not None:  # the caller's extra analysis of the final students (it skips what it has)
            final_hook(arm=arm, trainer=tr if ready else None, members=members, data=data, settings=settings,
                       runs_dir=runs_dir, clamp=clamp)
        if routing_ns:
            rpath = runs_dir / f"routing_{spec['label'].replace(':', '-')}_{target}.jsonl"
            rdone = read_records(rpath, ("stage", "seed", "n_train"), settings)
            for i, (s, n) in enumerate(members):
                if n not in routing_ns:
                    continue
                if (last, s, n) not in rdone:
                    if not ready:
                        continue
                    rec = {"stage": last, "seed": s, "n_train": n, "arm": arm, "size": spec["label"], "target": target,
                           "splits": routing_split(tr.ema_model.member(i, clamp=clamp), data[i], n=n_eval,
                                                   seed=eval_seed, solver=solver),
                           "settings_key": key, "settings": settings}
                    append_jsonl(rpath, rec)
                    rdone[(last, s, n)] = rec
                    log(f"[{arm}] routing N={n} seed {s}: " + ", ".join(
                        f"{m['mode']}@{m['sigma_c']:g}: {m['basin_agreement']:.3f}" for m in rec["splits"]))
                routing.append(rdone[(last, s, n)])
        if distill and target == "sample":
            dpath = runs_dir / f"distill_{spec['label'].replace(':', '-')}_{target}.jsonl"
            dset = run_settings(**settings, distill=distill)
            ddone = read_records(dpath, ("stage", "seed", "n_train", "segments"), dset)
            for i, (s, n) in enumerate(members):
                if n not in distill["n_trains"]:
                    continue
                refs = None  # the member's teacher / empirical maps, shared by its distilled students
                for k in distill["segments"]:
                    if (last, s, n, k) not in ddone:
                        if not ready:
                            continue
                        refs = refs or reference_maps(tmap, data[i], **solver)
                        rec = {"stage": last, "seed": s, "n_train": n, "segments": k, "arm": arm,
                               **distill_one(tr.ema_model.member(i, clamp=clamp), data[i], teacher, refs, k, seed=s,
                                             n_eval=n_eval, eval_seed=eval_seed, solver=solver, cfg=distill),
                               "settings_key": settings_key(dset), "settings": dset}
                        append_jsonl(dpath, rec)
                        ddone[(last, s, n, k)] = rec
                        log(f"[{arm}] distilled N={n} seed {s} into {k} step(s): copies {rec['copy_fraction']:.3f} "
                            f"basins {rec['basin_agreement']:.3f} E_mem/E_gen(mem) {rec['e_mem_rel']:.3f} "
                            f"E_gen/E_gen(mem) {rec['e_gen_rel']:.3f}, PFD to its teacher {rec['pfd_to_teacher']:.3f}")
                    distilled.append(ddone[(last, s, n, k)])
    summary = summarize(rows, [f"{parse_size(size)['label']} {target}" for size, target in arms])
    expected = len(arms) * len(members) * len(stages)
    return {"rows": rows, "summary": summary, "routing": routing, "routing_summary": _routing_summary(routing),
            "distilled": distilled, "distill_summary": _distill_summary(distilled, rows),
            "complete": len(rows) == expected, "n_rows": len(rows), "n_rows_expected": expected,
            "seconds": time.perf_counter() - t0}


# just below the points of the EDM Heun 18 grid (80, ..., 12.91, 8.40, 5.32, 3.26, 1.92, 1.09, 0.585, 0.296, ...):
# each split hands one more grid point to the other denoiser
SIGMA_SPLITS = (12.9, 8.4, 5.3, 3.25, 1.9, 1.08, 0.58, 0.29)


def routing_split(net: Any, data: Any, *, n: int, seed: int, solver: dict[str, Any],
                  sigma_cs: tuple[float, ...] = SIGMA_SPLITS) -> list[dict[str, Any]]:
    """Where the student routes noise differently from the memorizer: PF-ODE maps on the same grid
    that use the exact empirical denoiser above sigma_c and the student's at or below it
    ("memorizer_above"), or the reverse ("student_above"); basin agreement of each with the
    memorizer's map and its E_mem, on the canonical noise (seed, n)."""
    import torch

    import pfd

    emp = pfd.GaussianMixture.empirical(data)
    y = data.detach().to(torch.float64).reshape(data.shape[0], -1)
    z = pfd.canonical_noise(n, tuple(data.shape[1:]), seed=seed)
    ref = emp.ode_map(**solver)(z).reshape(n, -1)
    basin = torch.cdist(ref, y).argmin(1)
    out = []
    for mode in ("memorizer_above", "student_above"):
        for sc in sigma_cs:
            def den(x, sigma, sc=sc, mode=mode):
                sv = float(torch.as_tensor(sigma).reshape(-1)[0])
                if (sv > sc) == (mode == "memorizer_above"):
                    return emp.denoiser(x.to(torch.float64), sv)
                with torch.no_grad():
                    return net(x.to(torch.float32), torch.full((x.shape[0],), sv)).to(torch.float64)

            x = pfd.DiffusionMap(den, shape=tuple(data.shape[1:]), **solver)(z).reshape(n, -1)
            out.append({"mode": mode, "sigma_c": sc,
                        "basin_agreement": float((torch.cdist(x, y).argmin(1) == basin).double().mean()),
                        "e_mem": float((x - ref).pow(2).sum(1).mean().sqrt())})
    return out


DISTILL = {"n_trains": [8, 16], "segments": [1, 4], "width": 128, "depth": 2, "train_steps": 3000, "batch_size": 256,
           "lr": 2e-3, "n_pairs": 4096, "substeps": 32}
"""Distillation of the final-stage DSM students into the package's trajectory students (as in
benchmarks/generalization_digits.py: OU coordinates, EDM-spaced grid from sigma 80 to 0.002, one
residual MLP per segment, trained on the DSM student's own PF-ODE trajectories from fresh noise)."""


def distill_one(net: Any, data: Any, teacher: Any, refs: Any, segments: int, *, seed: int, n_eval: int,
                eval_seed: int, solver: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """Distill one DSM student (denoiser ``net`` on images, trained on ``data``) into a
    ``segments``-step trajectory student and score it against the cached teacher and empirical maps
    ``refs`` (:func:`pfd.analysis.reference_maps`): E_gen, E_mem, the E_mem breakdown, and its PFD
    to the DSM student."""
    import torch
    from generalization_digits import dsm_trajectory_pairs

    import pfd
    from pfd.analysis import generalization_errors, memorization_breakdown
    from pfd.distill import TRAJECTORY_TRAIN, train_trajectory_student
    from pfd.maps import CachedMap
    from pfd.schedules import get_process, time_grid

    shape = tuple(data.shape[1:])

    def flat(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return net(x.reshape(x.shape[0], *shape), sigma).reshape(x.shape[0], -1)

    proc = get_process("ou")
    grid = time_grid(segments, float(proc.t_from_sigma_ve(0.002)), float(proc.t_from_sigma_ve(80.0)), "edm", "ou")
    xs, ys = dsm_trajectory_pairs(flat, teacher.dim, grid, cfg["n_pairs"], seed, cfg["substeps"])
    conf = TRAJECTORY_TRAIN.replace(width=cfg["width"], depth=cfg["depth"], train_steps=cfg["train_steps"],
                                    batch_size=cfg["batch_size"], lr=cfg["lr"], progress=False)
    stu, _hist = train_trajectory_student(teacher, grid, process="ou", seed=seed, pairs=(xs, ys), config=conf)
    flat_map = stu.as_map()  # on flattened samples (d,)
    smap = CachedMap(pfd.OneStepMap(lambda z: flat_map(z.reshape(z.shape[0], -1)).reshape(z.shape), shape=shape,
                                    name=f"{segments}-step trajectory student"))
    kw = {"n": n_eval, "seed": eval_seed}
    err = generalization_errors(smap, None, None, references=refs, **kw)
    brk = memorization_breakdown(smap, data, references=refs, **kw)
    emp = generalization_errors(refs.empirical, None, None, references=refs, **kw).e_gen.value
    dsm = pfd.DiffusionMap(net, shape=shape, **solver)
    to_teacher = pfd.distance(smap, dsm, progress=False, **kw)
    return {**err.to_dict(), "n_train": int(data.shape[0]), **brk.to_dict(), "e_gen_rel": err.e_gen.value / emp,
            "e_mem_rel": err.e_mem.value / emp, "e_gen_empirical": emp, "pfd_to_teacher": to_teacher.value,
            "pfd_to_teacher_ci95": list(to_teacher.ci95), "student_params": stu.n_params}


def _distill_summary(distilled: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (N, segments): seed means and 95% t-intervals; segments 0 is the DSM student itself."""
    out = []
    for n in sorted({d["n_train"] for d in distilled}):
        seeds = sorted({d["seed"] for d in distilled if d["n_train"] == n})
        stage = max(d["stage"] for d in distilled)
        teach = [r for r in rows if r["n_train"] == n and r["stage"] == stage and r.get("target") == "sample"
                 and r["seed"] in seeds]
        groups = [(0, teach)] + [(k, [d for d in distilled if d["n_train"] == n and d["segments"] == k])
                                 for k in sorted({d["segments"] for d in distilled})]
        for k, sel in groups:
            if not sel:
                continue
            row: dict[str, Any] = {"n_train": n, "segments": k, "seeds": len(sel)}
            for f in ("copy_fraction", "basin_agreement", "e_mem_rel", "e_gen_rel") + (("pfd_to_teacher",) if k else ()):
                row[f], row[f + "_ci95"] = _t_ci([r[f] for r in sel], proportion=f in PROPORTIONS)
            out.append(row)
    return out


def _routing_summary(routing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for arm, n in sorted({(r["arm"], r["n_train"]) for r in routing}):
        sel = [r for r in routing if r["arm"] == arm and r["n_train"] == n]
        for k, split in enumerate(sel[0]["splits"]):
            m, ci = _t_ci([r["splits"][k]["basin_agreement"] for r in sel], proportion=True)
            out.append({"arm": arm, "n_train": n, "mode": split["mode"], "sigma_c": split["sigma_c"], "seeds": len(sel),
                        "basin_agreement": m, "basin_agreement_ci95": ci})
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = result["summary"]
    sizes = sorted({r["arm"] for r in summ}, key=lambda a: (next(r["n_params"] for r in summ if r["arm"] == a), a))
    panels = [("copy_fraction", "copy fraction (d1/d2 < 1/3)"), ("basin_agreement", "basin agreement with memorizer"),
              ("e_mem_rel", "E_mem / E_gen(memorizer)"), ("e_gen_rel", "E_gen / E_gen(memorizer)")]
    fig, axes = plt.subplots(len(sizes), 4, figsize=(17, 3.6 * len(sizes)), squeeze=False)
    ns = sorted({r["n_train"] for r in summ})
    cmap = plt.get_cmap("viridis")
    for i, size in enumerate(sizes):
        for j, (f, title) in enumerate(panels):
            ax = axes[i][j]
            for k, n in enumerate(ns):
                sel = sorted((r for r in summ if r["arm"] == size and r["n_train"] == n), key=lambda r: r["stage"])
                if not sel:
                    continue
                x = [r["stage"] for r in sel]
                c = cmap(k / max(1, len(ns) - 1))
                ax.plot(x, [r[f] for r in sel], "o-", color=c, label=f"N={n}", ms=3)
                ax.fill_between(x, [r[f + "_ci95"][0] for r in sel], [r[f + "_ci95"][1] for r in sel], color=c,
                                alpha=0.2, lw=0)
                if f == "e_mem_rel":
                    ax.plot(x, [r["e_mem_switched_rel"] for r in sel], ":", color=c, lw=1)
            ax.set_xscale("log")
            stages = sorted({r["stage"] for r in summ})
            ax.set_xticks(stages, [f"{st // 1000}k" if st >= 1000 else str(st) for st in stages])
            ax.minorticks_off()
            ax.set_xlabel("training steps")
            ax.set_title(f"{size}: {title}", fontsize=9)
            ax.grid(alpha=0.3)
            if f in ("copy_fraction", "basin_agreement"):
                ax.set_ylim(-0.02, 1.02)
        axes[i][0].legend(fontsize=7, loc="best")
    axes[0][2].text(0.02, 0.02, "dotted: switched-basin part", transform=axes[0][2].transAxes, fontsize=7)
    fig.suptitle("Digits students through training: 95% t-intervals over seeds", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_routing_distill(result: dict[str, Any], path: Path) -> None:
    """Left: basin agreement of the hybrid maps against the split sigma_c; right: the distilled
    students beside their DSM teachers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    rs = result["routing_summary"]
    cmap = plt.get_cmap("viridis")
    arms = sorted({r["arm"] for r in rs})
    ns = sorted({r["n_train"] for r in rs})
    for a, arm in enumerate(arms):
        for k, n in enumerate(ns):
            c = cmap(k / max(1, len(ns) - 1))
            for mode, ls in (("memorizer_above", "-"), ("student_above", "--")):
                sel = sorted((r for r in rs if r["arm"] == arm and r["n_train"] == n and r["mode"] == mode),
                             key=lambda r: r["sigma_c"])
                if not sel:
                    continue
                x = [r["sigma_c"] for r in sel]
                ax = axes[0]
                ax.plot(x, [r["basin_agreement"] for r in sel], ls, marker="o" if a == 0 else "s", ms=3, color=c,
                        label=f"N={n} {arm.split()[-1]}, {mode.replace('_', ' ')}")
                ax.fill_between(x, [max(0.0, r["basin_agreement_ci95"][0]) for r in sel],
                                [min(1.0, r["basin_agreement_ci95"][1]) for r in sel], color=c, alpha=0.15, lw=0)
    axes[0].set_xscale("log")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylim(-0.02, 1.02)
    axes[0].set_xlabel("sigma_c (memorizer's denoiser above / student's at or below, or the reverse)")
    axes[0].set_ylabel("basin agreement with the memorizer")
    axes[0].set_title("Where the student routes noise elsewhere", fontsize=10)
    axes[0].legend(fontsize=6, ncol=2)
    axes[0].grid(alpha=0.3)
    ds = result["distill_summary"]
    for j, (f, title) in enumerate((("copy_fraction", "copy fraction"), ("e_mem_rel", "E_mem / E_gen(memorizer)"))):
        ax = axes[1 + j]
        segs = sorted({r["segments"] for r in ds})
        width = 0.8 / max(1, len(segs))
        for i, k in enumerate(segs):
            sel = sorted((r for r in ds if r["segments"] == k), key=lambda r: r["n_train"])
            x = [ns_i + (i - (len(segs) - 1) / 2) * width for ns_i in range(len(sel))]
            err = [[r[f] - r[f + "_ci95"][0] for r in sel], [r[f + "_ci95"][1] - r[f] for r in sel]]
            ax.bar(x, [r[f] for r in sel], width, yerr=err, capsize=3,
                   label="DSM teacher (Heun 18)" if k == 0 else f"{k}-step distilled")
            ax.set_xticks(range(len(sel)), [f"N={r['n_train']}" for r in sel])
        ax.set_title(f"Distilled vs DSM teacher: {title}", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Digits students (mlp:192:3, final stage): 95% t-intervals over seeds", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import torch

    from pfd.report import write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run into results/quick/")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--sizes", default="mlp:192:3")
    ap.add_argument("--n-trains", default="8,16,32,64,128")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--stages", default="2000,5000,10000,20000")
    ap.add_argument("--targets", default="sample", help="comma-separated: sample (DSM), posterior (exact target)")
    ap.add_argument("--n-eval", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--routing-ns", default="8,16,32", help="N values whose routing is split by sigma at the end")
    ap.add_argument("--no-distill", action="store_true", help="skip distilling the final students (DISTILL)")
    ap.add_argument("--name", default=None, help="write memorization_digits_NAME.json (a part run in its own process)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir) if args.out_dir else RESULTS / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        sizes, n_trains, seeds, stages, n_eval = ["mlp:16:2"], [8, 16], [0, 1], [40, 80], 128
        train = {"check_every": 20, "n_check": 64, "warmup": 10}
    else:
        sizes, seeds = args.sizes.split(","), list(range(args.seeds))
        n_trains = [int(v) for v in args.n_trains.split(",")]
        stages, n_eval, train = [int(v) for v in args.stages.split(",")], args.n_eval, None
    targets = tuple(args.targets.split(","))
    routing_ns = tuple(int(v) for v in args.routing_ns.split(",") if v) if not args.quick else (8,)
    distill = None if args.no_distill else (
        {**DISTILL, "n_trains": [8], "segments": [1], "train_steps": 20, "n_pairs": 64, "substeps": 4} if args.quick
        else DISTILL)
    res = run_study(sizes, n_trains, seeds, stages, out_dir=out, targets=targets, n_eval=n_eval, train=train,
                    device=args.device, routing_ns=routing_ns, distill=distill, progress=not args.quick)
    from pfd.analysis.mtog import DEFAULT_TRAIN

    res["config"] = {"teacher": "digits", "sizes": sizes, "targets": list(targets), "n_trains": n_trains,
                     "seeds": seeds, "stages": stages,
                     "n_eval": n_eval, "eval_seed": 0, "solver": {"solver": "heun", "steps": 18},
                     "train": {**DEFAULT_TRAIN, "min_steps": "off (constant lr)", **(train or {})},
                     "threads": args.threads, "device": args.device,
                     "copy_threshold": 1 / 3, "intervals": "95% t over seeds", "routing_ns": list(routing_ns),
                     "sigma_splits": list(SIGMA_SPLITS), "distill": distill,
                     "machine": "2 CPU cores shared with other jobs" if args.device == "cpu" else args.device}
    path = out / ("memorization_digits.json" if args.name is None else f"memorization_digits_{args.name}.json")
    write_json(path, res)
    plot(res, path.with_suffix(".png"))
    if res["routing_summary"] or res["distill_summary"]:
        plot_routing_distill(res, path.with_name(path.stem + "_routing.png"))
    print(f"wrote {path} ({res['n_rows']}/{res['n_rows_expected']} rows, complete={res['complete']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
