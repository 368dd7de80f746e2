"""Throughput of the analytic denoiser and of whole PFD evaluations, against naive baselines.

Measured side by side in one run (medians of repeats; the machine may be shared):
  1. machine roofline: memory bandwidth (large tensor copy) and float64 GEMM rate;
  2. GaussianMixture.denoiser: sample*NFE/s vs n, d, K, covariance type, against a plain
     per-component loop with (n x K x d) temporaries; fraction of the bandwidth bound
     (2 x 8 d bytes per sample / bandwidth) and of the roofline max(bandwidth bound,
     flops / GEMM rate + K exponentials / exp rate);
  3. time to a PFD within 0.5% of a dopri5(1e-10) reference: the fast fixed-grid solver at the
     smallest NFE that reaches it vs torchdiffeq dopri5 at the loosest tolerance that reaches it
     (both through pfd.distance), and the fast solver with the plain-loop denoiser;
  4. peak memory of pfd.distance(batch_size="auto") vs n, d = 16: peak RSS (VmHWM, reset just
     before the call) of a fresh subprocess, minus its RSS before the call.
Prints tables, writes benchmarks/results/throughput.json and throughput.png.

    python benchmarks/throughput.py [--solver unipc3 --grid karras] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # perf_suite, and this checkout's pfd

from perf_suite import steps_for_nfe, suite  # noqa: E402

import pfd  # noqa: E402
from pfd.report import format_table, write_json  # noqa: E402

RESULTS = HERE / "results"
F64 = torch.float64


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


# ------------------------------------------------------------------ 1. roofline
def roofline(repeats: int) -> dict:
    n = 32 * 2**20 // 8 * 8  # 256 MiB of float64
    src = torch.rand(n // 8, dtype=F64)
    dst = torch.empty_like(src)
    t_copy = median_time(lambda: dst.copy_(src), repeats)
    bw = 2 * src.numel() * 8 / t_copy  # read + write
    a = torch.rand(2048, 2048, dtype=F64)
    b = torch.rand(2048, 2048, dtype=F64)
    t_mm = median_time(lambda: a @ b, repeats)
    flops = 2 * 2048**3 / t_mm
    x = torch.rand(4 * 2**20, dtype=F64)
    t_exp = median_time(lambda: torch.exp(x), repeats)
    return {"bandwidth_GBps": bw / 1e9, "gemm_GFLOPs": flops / 1e9, "exp_Gps": x.numel() / t_exp / 1e9,
            "threads": torch.get_num_threads()}


# ------------------------------------------------------------------ 2. denoiser
def naive_denoiser(gmm: pfd.GaussianMixture):
    """The textbook formula with a Python loop over components and (n x K x d) temporaries."""
    covs = gmm.component_covs()

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x = x.to(F64)
        s2 = float(sigma.reshape(-1)[0]) ** 2
        eye = torch.eye(x.shape[1], dtype=F64)
        logits, posts = [], []
        for k in range(gmm.n_components):
            c = covs[k] + s2 * eye
            mvn = torch.distributions.MultivariateNormal(gmm.means[k], covariance_matrix=c)
            logits.append(gmm.log_weights[k] + mvn.log_prob(x))
            posts.append(gmm.means[k] + (x - gmm.means[k]) @ torch.linalg.solve(c, covs[k]))
        r = torch.softmax(torch.stack(logits, 1), dim=1)  # (n, K)
        return torch.einsum("nk,nkd->nd", r, torch.stack(posts, 1))

    return denoise


def denoiser_costs(gmm: pfd.GaussianMixture) -> tuple[float, float, float]:
    """(bytes, flops, exponentials) per sample of one denoiser call: lower bounds of the work
    the closed form needs, used for the roofline."""
    k, d = gmm.n_components, gmm.dim
    byts = 2 * 8 * d  # read x, write D(x)
    if gmm.cov_type == "full":
        flops = 2 * k * d * d * 2 + 6 * k * d  # rotate x into each eigenbasis, rotate back
    else:
        flops = 2 * k * d * 2 + 2 * k * d + 4 * k  # logits GEMM, mean GEMM(s), softmax
    return byts, flops, k  # one exponential per component (softmax)


def bench_denoiser(roof: dict, repeats: int, quick: bool) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    cases = []
    for cov_type in ("iso", "diag", "full"):
        for d, k in ((2, 8), (16, 8), (64, 16)):
            mu = torch.randn(k, d, generator=g, dtype=F64)
            if cov_type == "iso":
                cov = 0.1 + torch.rand(k, generator=g, dtype=F64)
            elif cov_type == "diag":
                cov = 0.1 + torch.rand(k, d, generator=g, dtype=F64)
            else:
                q, _ = torch.linalg.qr(torch.randn(k, d, d, generator=g, dtype=F64))
                cov = q @ torch.diag_embed(0.1 + torch.rand(k, d, generator=g, dtype=F64)) @ q.transpose(1, 2)
            cases.append((f"{cov_type} d={d} K={k}", pfd.GaussianMixture(torch.ones(k), mu, cov)))
    cases.append(("empirical d=2 K=1000", pfd.GaussianMixture.empirical(torch.randn(1000, 2, generator=g, dtype=F64))))
    cases.append(("empirical d=16 K=1e5", pfd.GaussianMixture.empirical(torch.randn(100_000, 16, generator=g, dtype=F64))))
    ns = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    rows = []
    for name, gmm in cases:
        big = gmm.n_components >= 100_000
        for n in ((1_000,) if big else ns):
            x = torch.randn(n, gmm.dim, generator=g, dtype=F64) * 2.0
            sig = torch.full((n,), 0.5, dtype=F64)
            reps = 1 if big else repeats
            t_fast = median_time(lambda gmm=gmm, x=x, sig=sig: gmm.denoiser(x, sig), reps)
            naive_ok = n * gmm.n_components <= 1e7 and n * gmm.n_components * gmm.dim <= 2e8
            t_naive = median_time(lambda gmm=gmm, x=x, sig=sig: naive_denoiser(gmm)(x, sig), reps) if naive_ok else None
            byts, flops, exps = denoiser_costs(gmm)
            t_bw = n * byts / (roof["bandwidth_GBps"] * 1e9)
            # compute bound: GEMM-rate flops plus exponentials at the measured exp rate
            t_fl = n * flops / (roof["gemm_GFLOPs"] * 1e9) + n * exps / (roof["exp_Gps"] * 1e9)
            rows.append({
                "model": name, "n": n, "fast_Msample_per_s": n / t_fast / 1e6,
                "naive_Msample_per_s": None if t_naive is None else n / t_naive / 1e6,
                "speedup_vs_naive": None if t_naive is None else t_naive / t_fast,
                "frac_of_bandwidth_bound": t_bw / t_fast, "frac_of_roofline": max(t_bw, t_fl) / t_fast,
                "fast_s": t_fast, "naive_s": t_naive,
            })
            print(f"  denoiser {name:24s} n={n:>7d}: {n / t_fast / 1e6:8.3f} M sample/s"
                  + ("" if t_naive is None else f", naive loop {n / t_naive / 1e6:8.3f} ({t_naive / t_fast:.1f}x)"),
                  flush=True)
    return rows


def precision_f32() -> list[dict]:
    """Error of the isotropic mixture denoiser evaluated in float32 (the same expanded-square
    GEMM formulation as the float64 path) against the float64 denoiser, per noise level."""
    rows = []
    for name in ("2d-8modes-narrow", "2d-8modes-wide", "empirical-1000"):
        gmm = suite()[name][0]
        for sigma in (0.002, 0.02, 0.2, 2.0, 80.0):
            x = gmm.sample(4096, seed=5) + sigma * pfd.canonical_noise(4096, gmm.event_shape, seed=6)
            ref = gmm.denoiser(x, sigma)
            x32, mu, v, lw = x.float(), gmm.means.float(), gmm.covs.float(), gmm.log_weights.float()
            c = v + sigma**2
            sq = ((x32 * x32).sum(1, keepdim=True) - 2 * x32 @ mu.T + (mu * mu).sum(1)).clamp_min(0)
            logit = lw - 0.5 * sq / c - 0.5 * gmm.dim * torch.log(c)
            r = torch.softmax(logit, dim=1)
            d32 = r @ (mu * (1 - v / c)[:, None]) + (r * (v / c)).sum(1, keepdim=True) * x32
            err = (d32.double() - ref).norm(dim=1)
            rows.append({"model": name, "sigma": sigma, "f32_max_err": float(err.max()),
                         "f32_rms_err": float(err.pow(2).mean().sqrt()),
                         "data_rms": float(ref.pow(2).sum(1).mean().sqrt())})
            print(f"  float32 {name} sigma={sigma:g}: max err {rows[-1]['f32_max_err']:.2e}", flush=True)
    return rows


# ------------------------------------------------------------------ 3. time to 0.5% PFD
def time_to_accuracy(solver: str, grid: str, repeats: int, quick: bool, n: int) -> list[dict]:
    target = 0.005
    names = ["2d-8modes-narrow", "d16-6modes-diag", "empirical-1000"]
    if quick:
        names = names[:1]
    cases = suite()
    rows = []
    for name in names:
        teacher, student = cases[name]
        z = pfd.canonical_noise(n, teacher.event_shape, seed=11)

        def pfd_of(kw, t=teacher, s=student, z=z):
            res = pfd.distance(pfd.DiffusionMap(t.denoiser, **kw), pfd.DiffusionMap(s.denoiser, **kw),
                               noise=z, progress=False)
            return res

        ref = pfd_of({"solver": "dopri5", "rtol": 1e-10, "atol": 1e-10}).value
        fast_kw = None
        for nfe in (6, 8, 10, 12, 14, 16, 20, 24, 28, 35, 48, 64):
            kw = {"solver": solver, "steps": steps_for_nfe(solver, nfe), "grid": grid}
            if abs(pfd_of(kw).value - ref) / ref <= target:
                fast_kw = kw
                break
        heun_kw = None
        for steps in (6, 8, 10, 12, 14, 18, 24, 32, 48):
            kw = {"solver": "heun", "steps": steps}
            if abs(pfd_of(kw).value - ref) / ref <= target:
                heun_kw = kw
                break
        dopri_kw = None
        for rtol in (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 1e-6, 1e-7):
            kw = {"solver": "dopri5", "rtol": rtol, "atol": rtol}
            try:
                ok = abs(pfd_of(kw).value - ref) / ref <= target
            except RuntimeError:
                ok = False
            if ok:
                dopri_kw = kw
                break
        entry = {"case": name, "n": n, "pfd_ref": ref}
        runs = {"fast": fast_kw, "heun": heun_kw, "dopri5": dopri_kw}
        if fast_kw is not None:
            runs["fast+naive-denoiser"] = dict(fast_kw, naive=True)
        for tag, kw in runs.items():
            if kw is None:
                entry[f"{tag}_s"] = None
                continue
            kw = dict(kw)
            if kw.pop("naive", False):
                ma = pfd.DiffusionMap(naive_denoiser(teacher), shape=teacher.event_shape, **kw)
                mb = pfd.DiffusionMap(naive_denoiser(student), shape=student.event_shape, **kw)
            else:
                ma, mb = pfd.DiffusionMap(teacher.denoiser, **kw), pfd.DiffusionMap(student.denoiser, **kw)
            out = {}

            def once(ma=ma, mb=mb, z=z, out=out):
                out["res"] = pfd.distance(ma, mb, noise=z, progress=False)

            entry[f"{tag}_s"] = median_time(once, repeats)
            entry[f"{tag}_nfe"] = out["res"].nfe[0]
            entry[f"{tag}_rel_err"] = abs(out["res"].value - ref) / ref
            entry[f"{tag}_setting"] = dict(kw)
        if entry.get("fast_s") and entry.get("dopri5_s"):
            entry["speedup_vs_dopri5"] = entry["dopri5_s"] / entry["fast_s"]
        if entry.get("fast_s") and entry.get("heun_s"):
            entry["speedup_vs_heun"] = entry["heun_s"] / entry["fast_s"]
        if entry.get("fast_s") and entry.get("fast+naive-denoiser_s"):
            entry["speedup_vs_naive_denoiser"] = entry["fast+naive-denoiser_s"] / entry["fast_s"]
        print(f"  time-to-0.5% {name}: " + ", ".join(f"{t} {entry.get(t + '_s') or float('nan'):.3g}s "
                                                    f"({entry.get(t + '_nfe') or float('nan'):.0f} NFE)" for t in runs),
              flush=True)
        rows.append(entry)
    return rows


# ------------------------------------------------------------------ 4. peak memory
_MEM_CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[4])
import pfd
from perf_suite import suite
torch.manual_seed(0)
teacher, student = suite()["d16-6modes-diag"]
kw = json.loads(sys.argv[3])
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
    f.write("5")
t0 = time.perf_counter()
res = pfd.distance(teacher.ode_map(**kw), student.ode_map(**kw), n=int(sys.argv[1]),
                   batch_size="auto" if sys.argv[2] == "auto" else int(sys.argv[2]), progress=False)
secs = time.perf_counter() - t0
print(json.dumps({"peak_rss_MB": status("VmHWM"), "baseline_rss_MB": base, "seconds": secs, "value": res.value}))
"""


def peak_memory(solver: str, grid: str, steps: int, quick: bool) -> list[dict]:
    rows = []
    kw = json.dumps({"solver": solver, "steps": steps, "grid": grid})
    ns = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    for n in ns:
        out = subprocess.run([sys.executable, "-c", _MEM_CHILD, str(n), "auto", kw, str(HERE), ],
                             capture_output=True, text=True, check=True, cwd=HERE.parent,
                             env={"PYTHONPATH": f"{HERE.parent}:{HERE}", "PATH": "/usr/bin:/bin",
                                  "OMP_NUM_THREADS": str(torch.get_num_threads())})
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r.update(n=n, d=16, batch_size="auto")
        r["increment_MB"] = r["peak_rss_MB"] - r["baseline_rss_MB"]
        print(f"  peak memory n={n:>8d}: {r['peak_rss_MB']:.0f} MB (after import {r['baseline_rss_MB']:.0f} MB), "
              f"{r['seconds']:.1f} s", flush=True)
        rows.append(r)
    return rows


def plot(data: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    models = sorted({r["model"] for r in data["denoiser"]})
    for m in models:
        pts = [(r["n"], r["fast_Msample_per_s"]) for r in data["denoiser"] if r["model"] == m]
        ax[0].loglog(*zip(*pts, strict=True), marker="o", label=m)
    ax[0].set_xlabel("n (batch)")
    ax[0].set_ylabel("M sample*NFE / s")
    ax[0].legend(fontsize=6)
    mem = data["memory"]
    ax[1].semilogx([r["n"] for r in mem], [r["peak_rss_MB"] for r in mem], marker="o", label="peak RSS")
    ax[1].semilogx([r["n"] for r in mem], [r["baseline_rss_MB"] for r in mem], "--", label="after import")
    ax[1].set_xlabel("n (noise samples)")
    ax[1].set_ylabel("MB")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--solver", default="unipc3")
    ap.add_argument("--grid", default="karras")
    ap.add_argument("--mem-steps", type=int, default=16, help="steps of the solver in the memory test")
    ap.add_argument("--n", type=int, default=2048, help="noise samples in the time-to-accuracy test")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", default="denoiser,precision,accuracy,memory",
                    help="comma list of parts to (re)measure; others are kept from an existing JSON")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: robust on a shared machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    parts = set(args.parts.split(","))
    data = {}
    if parts != {"denoiser", "precision", "accuracy", "memory"} and (RESULTS / "throughput.json").exists():
        data = json.loads((RESULTS / "throughput.json").read_text())
    data.update({"solver": args.solver, "grid": args.grid, "threads": args.threads,
                 "note": "shared machine (2 cores, other helpers' jobs running); 1 torch thread by default"})
    if "denoiser" in parts or "roofline" not in data:
        data["roofline"] = roofline(args.repeats)  # measured in the same run as the denoiser
        print(f"roofline: {data['roofline']}", flush=True)
    if "denoiser" in parts:
        data["denoiser"] = bench_denoiser(data["roofline"], args.repeats, args.quick)
    if "precision" in parts:
        data["float32"] = precision_f32()
    if "accuracy" in parts:
        data["time_to_accuracy"] = time_to_accuracy(args.solver, args.grid, args.repeats, args.quick, args.n)
    if "memory" in parts:
        data["memory"] = peak_memory(args.solver, args.grid, args.mem_steps, args.quick)
    data["seconds"] = time.perf_counter() - t0
    data["versions"] = pfd.estimator.__globals__["versions"]()
    print("\nAnalytic denoiser throughput (M sample*NFE/s; medians)")
    print(format_table(data["denoiser"], ["model", "n", "fast_Msample_per_s", "naive_Msample_per_s", "speedup_vs_naive",
                                          "frac_of_bandwidth_bound", "frac_of_roofline"]))
    if "float32" in data:
        print("\nIsotropic denoiser in float32 vs float64 (error norms)")
        print(format_table(data["float32"], ["model", "sigma", "f32_max_err", "f32_rms_err", "data_rms"]))
    print("\nTime to a PFD within 0.5% of the reference (pfd.distance, seconds, medians)")
    print(format_table(data["time_to_accuracy"], ["case", "n", "fast_nfe", "fast_s", "heun_nfe", "heun_s", "dopri5_nfe",
                                                  "dopri5_s", "fast+naive-denoiser_s", "speedup_vs_dopri5",
                                                  "speedup_vs_heun", "speedup_vs_naive_denoiser"]))
    print("\nPeak memory of pfd.distance(batch_size='auto'), d = 16")
    print(format_table(data["memory"], ["n", "peak_rss_MB", "baseline_rss_MB", "increment_MB", "seconds"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "throughput.json", data)
    plot(data, RESULTS / "throughput.png")
    print(f"\nwrote {RESULTS / 'throughput.json'} ({data['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
