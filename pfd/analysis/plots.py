"""PNG plots of the analyses (matplotlib, imported lazily: install the ``plot`` extra)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

__all__ = ["plot_bias_variance", "plot_dynamics", "plot_mtog"]


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
