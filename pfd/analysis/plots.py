"""PNG plots of the analyses (matplotlib, imported lazily: install the ``plot`` extra)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

__all__ = ["plot_bias_variance", "plot_digits_teacher", "plot_dynamics", "plot_mtog", "plot_mtog_sweep"]


def _plt():
    try:
        import matplotlib
    except ImportError:  # pragma: no cover
        raise ImportError("plots need matplotlib: pip install 'pfd[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def _seed_mean(runs, width, field):
    ns = sorted({r["n_train"] for r in runs if r["width"] == width})
    ys = [[r[field] for r in runs if r["width"] == width and r["n_train"] == n] for n in ns]
    return ns, [sum(v) / len(v) for v in ys]


def plot_mtog(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Four panels: raw E_gen / E_mem against log2 N; the relative errors (e_gen_rel, e_mem_rel)
    against log2 N, against log2(N / sqrt|theta|) and against log2(N / |theta|^alpha*) with alpha*
    the best collapse of e_mem_rel."""
    plt = _plt()
    runs = result["runs"]
    widths = sorted({r["width"] for r in runs})
    best = result["collapse"].get("e_mem_rel", {}).get("best_alpha")
    panels = [("raw", 0.0), ("rel", 0.0), ("rel", 0.5)] + ([("rel", best)] if best is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    colors = plt.cm.viridis([i / max(1, len(widths) - 1) for i in range(len(widths))])
    for ax, (kind, a) in zip(axes[0], panels, strict=True):
        fields = (("e_gen", "-"), ("e_mem", "--")) if kind == "raw" else (("e_gen_rel", "-"), ("e_mem_rel", "--"))
        for c, w in zip(colors, widths, strict=True):
            p = next(r["n_params"] for r in runs if r["width"] == w)
            for field, ls in fields:
                ns, ys = _seed_mean(runs, w, field)
                xs = [math.log2(n) - a * math.log2(p) for n in ns]
                ax.plot(xs, ys, ls, marker="o", ms=3, color=c, label=f"|θ|={p}" if ls == "-" else None)
        ax.set_xlabel("log2 N" if a == 0 else f"log2(N / |θ|^{a:g})")
        if kind == "raw":
            ax.set_ylabel("PFD: solid E_gen, dashed E_mem")
            ax.set_title("raw errors")
        else:
            ax.set_ylabel("relative to E_gen(empirical): solid E_gen, dashed E_mem")
            note = " (best collapse of e_mem_rel)" if a == best and a not in (0.0, 0.5) else ""
            ax.set_title(f"relative, alpha = {a:g}{note}", fontsize=9)
            ax.axhline(1.0, color="gray", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_dynamics(results: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Per run: E_gen, E_mem (left axis) and train / held-out DSM loss (right axis) per epoch."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        rows = res["rows"]
        ep = [r["epoch"] for r in rows]
        ax.plot(ep, [r["e_gen"] for r in rows], "-", label="E_gen")
        ax.plot(ep, [r["e_mem"] for r in rows], "-", label="E_mem")
        ax.axhline(res["e_gen_empirical"], color="gray", ls=":", label="E_gen of empirical model")
        m = res["features"]["minimum"]
        ax.plot([m["epoch"]], [m["value"]], "kv")
        ax.set_xlabel("epoch")
        ax.set_ylabel("PFD")
        ax2 = ax.twinx()
        ax2.plot(ep, [r["train_loss"] for r in rows], "C3--", lw=1, label="train loss")
        ax2.plot(ep, [r["heldout_loss"] for r in rows], "C4--", lw=1, label="held-out loss")
        ax2.set_ylabel("DSM loss")
        c = res["config"]
        ax.set_title(f"N={c['n_train']}, |θ|={c['n_params']}")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_bias_variance(results: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Stacked bars E_bias^2 + E_var (unbiased; they sum to mean E_gen^2) per study, students beside
    empirical models."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.8 * 2 * len(results) + 2, 4))
    labels, bias, var = [], [], []
    for res in results:
        for kind in ("students", "empirical"):
            d = res[kind]
            labels.append(f"{kind}\nN={res['config']['n_train']}")
            bias.append(d["bias2"])
            var.append(d["var"])
    xs = range(len(labels))
    ax.bar(xs, bias, label="E_bias² (unbiased)")
    ax.bar(xs, var, bottom=bias, label="E_var (unbiased)")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("mean E_gen² = E_bias² + E_var")
    ax.legend()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_digits_teacher(path: str | os.PathLike[str], *, n: int = 12, seed: int = 0) -> Path:
    """Three rows of 8x8 images: real digits, samples of :func:`pfd.analytic.digits_teacher`, and
    its PF-ODE outputs (EDM Heun 18) on canonical noise."""
    from pfd.analytic.digits import digits_images, digits_teacher
    from pfd.noise import canonical_noise

    plt = _plt()
    teacher = digits_teacher()
    g = __import__("torch").Generator().manual_seed(seed)
    real = digits_images()[__import__("torch").randperm(1797, generator=g)[:n]]
    rows = [("real digits", real), ("teacher samples", teacher.sample(n, seed=seed)),
            ("teacher PF-ODE outputs", teacher.ode_map()(canonical_noise(n, teacher.event_shape, seed=seed)))]
    fig, axes = plt.subplots(3, n, figsize=(n * 0.9, 3 * 1.05 + 0.3))
    for i, (title, imgs) in enumerate(rows):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(imgs[j, 0].clamp(-1, 1).numpy(), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle("digits teacher: 10-component full-covariance mixture on sklearn's 8x8 digits (d = 64)", fontsize=10)
    return _save(fig, path)


def plot_mtog_sweep(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Four panels of the fair MtoG sweep: seed-mean E_gen against log2 N (dashed: the memorizer's),
    E_mem relative to the memorizer's E_gen, E_gen against log2(N / |theta|^alpha) at the fitted
    alpha, and N* against |theta| with bootstrap 95% CIs (lines: slopes 1/2 and alpha)."""
    import numpy as np

    plt = _plt()
    runs = result["runs"]
    sizes = sorted({r["size"] for r in runs}, key=lambda s: next(r["n_params"] for r in runs if r["size"] == s))
    alpha = result.get("collapse", {}).get("alpha")
    fig, ax = plt.subplots(1, 4, figsize=(19, 4.3))
    cmap = plt.get_cmap("viridis")
    for k, s in enumerate(sizes):
        col = cmap(k / max(1, len(sizes) - 1))
        rs = [r for r in runs if r["size"] == s]
        p = rs[0]["n_params"]
        ns = sorted({r["n_train"] for r in rs})

        def stat(field, rs=rs, ns=ns):
            v = [[r[field] for r in rs if r["n_train"] == n] for n in ns]
            return np.array([np.mean(x) for x in v]), np.array([np.std(x) for x in v])

        lx = np.log2(ns)
        eg, eg_sd = stat("e_gen")
        ax[0].errorbar(lx, eg, yerr=eg_sd, color=col, marker="o", ms=3, capsize=2, label=f"{s} (|θ|={p:,})")
        if k == 0:
            emp, _ = stat("e_gen_empirical")
            ax[0].plot(lx, emp, "k--", lw=1, label="memorizer (empirical model)")
        em, em_sd = stat("e_mem_rel")
        ax[1].errorbar(lx, em, yerr=em_sd, color=col, marker="o", ms=3, capsize=2, label=s)
        per = (result.get("collapse") or {}).get("per_size") or {}
        if alpha is not None and s in per:
            ax[2].plot(lx - alpha * math.log2(p), (eg - per[s]["b"]) / per[s]["a"], color=col, marker="o", ms=3,
                       label=s)
    ax[0].set(xlabel="log2 N", ylabel="E_gen = PFD(student, teacher)", title="E_gen (mean ± sd over seeds)")
    ax[0].legend(fontsize=7)
    ax[1].axhline(0, color="k", lw=0.5)
    ax[1].set(xlabel="log2 N", ylabel="E_mem / E_gen(memorizer)", title="memorization: E_mem relative (0 = memorizes)")
    ax[1].legend(fontsize=7)
    coll = result.get("collapse") or {}
    if alpha is not None and coll.get("c") is not None:
        u = np.linspace(*ax[2].get_xlim(), 200)
        ax[2].plot(u, 1.0 / (1.0 + np.exp((u - coll["c"]) / coll["w"])), "k--", lw=1, label="shared logistic")
        ax[2].legend(fontsize=7)
    ax[2].set(xlabel=f"log2(N / |θ|^α), α = {alpha:.2f}" if alpha is not None else "log2(N / |θ|^α)",
              ylabel="(E_gen - b_size) / a_size", title="collapse at the fitted α (per-size plateaus removed)")
    tr = [t for t in result.get("transitions", []) if t.get("n_star") is not None]
    if tr:
        p = np.array([t["params"] for t in tr], float)
        ns = np.array([t["n_star"] for t in tr], float)
        lo = np.array([t["n_star_ci95"][0] if t["n_star_ci95"] else np.nan for t in tr])
        hi = np.array([t["n_star_ci95"][1] if t["n_star_ci95"] else np.nan for t in tr])
        yerr = np.maximum(0, np.vstack([np.where(np.isnan(lo), 0, ns - lo), np.where(np.isnan(hi), 0, hi - ns)]))
        ax[3].errorbar(p, ns, yerr=yerr, fmt="o", color="C3", capsize=3, label="N* (E_gen), 95% CI")
        pp = np.geomspace(p.min(), p.max(), 50)
        gm = np.exp(np.mean(np.log(ns)))
        ref = np.exp(np.mean(np.log(p)))
        ax[3].plot(pp, gm * (pp / ref) ** 0.5, "k:", label="slope 1/2 (N ∝ √|θ|)")
        if alpha is not None:
            ci = result["collapse"].get("alpha_ci95")
            lab = f"slope α = {alpha:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
            ax[3].plot(pp, gm * (pp / ref) ** alpha, "C3--", label=lab)
        ax[3].set_xscale("log")
        ax[3].set_yscale("log", base=2)
        ax[3].legend(fontsize=7)
    ax[3].set(xlabel="|θ|", ylabel="N*", title="transition N* vs model size")
    fig.tight_layout()
    return _save(fig, path)
