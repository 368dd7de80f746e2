"""Benchmark of the training-loop integration.

1. Cost of a monitored evaluation: the first call (reference bank + student), later calls
   (student only) and a full recomputation of both maps with pfd.distance, when the reference
   and the student cost the same (mixtures of equal size, same solver).
2. Overhead of the monitor in the example training loop (examples/train_with_pfd.py): one
   evaluation measured in training steps, and the fraction of training time at every=100.
3. Distributed: the same PFD with torchrun --nproc_per_node=1 and =2 (gloo, CPU): values and
   wall times.

Prints tables and writes benchmarks/results/monitor.json (+ monitor.png).

    python benchmarks/monitor.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pfd  # noqa: E402
from pfd.estimator import versions  # noqa: E402
from pfd.report import format_table, write_json  # noqa: E402

DIST_N, DIST_K, DIST_D = 4096, 128, 16


def mixtures(k: int, d: int, scale: float = 1.05):
    g = torch.Generator().manual_seed(0)
    means = torch.randn(k, d, generator=g, dtype=torch.float64)
    w = torch.full((k,), 1.0 / k, dtype=torch.float64)
    covs = torch.full((k,), 0.1, dtype=torch.float64)
    return pfd.GaussianMixture(w, means, covs), pfd.GaussianMixture(w, scale * means, covs)


def bench_cost(configs, n: int, repeats: int = 3) -> list[dict]:
    rows = []
    for k, d in configs:
        t, s = mixtures(k, d)
        mon = pfd.PFDMonitor(t.ode_map(), n=n, every=1)
        w0 = time.perf_counter()
        first = mon.evaluate(s.ode_map(), 0)
        first_s = time.perf_counter() - w0
        later, full, later_cpu, full_cpu = [], [], [], []
        for i in range(repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            rec = mon.evaluate(s.ode_map(), i + 1)
            later.append(time.perf_counter() - w0)
            later_cpu.append(time.process_time() - c0)
            w0, c0 = time.perf_counter(), time.process_time()
            res = pfd.distance(t.ode_map(), s.ode_map(), n=n, progress=False)
            full.append(time.perf_counter() - w0)
            full_cpu.append(time.process_time() - c0)
            assert rec["pfd"] == res.value == first["pfd"]
        med = statistics.median
        rows.append({"K": k, "d": d, "n": n, "nfe per map": 35, "first call (s)": first_s,
                     "later call (s)": med(later), "both maps (s)": med(full), "speedup (wall)": med(full) / med(later),
                     "later call CPU (s)": med(later_cpu), "both maps CPU (s)": med(full_cpu),
                     "speedup (CPU)": med(full_cpu) / med(later_cpu), "pfd": first["pfd"]})
    return rows


def bench_example(steps: int, every: int, n: int) -> dict:
    spec = importlib.util.spec_from_file_location("train_with_pfd", ROOT / "examples" / "train_with_pfd.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with tempfile.TemporaryDirectory() as out:
        args = argparse.Namespace(steps=steps, every=every, n=n, batch=512, lr=2e-3, pair_chunks=4, seed=0,
                                  out=out, resume=False, threads=1)
        return mod.train(args)


def dist_worker(out: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t, s = mixtures(DIST_K, DIST_D)
    dist.barrier()
    w0 = time.perf_counter()
    res = pfd.distance(t.ode_map(), s.ode_map(), n=DIST_N, seed=0, batch_size=512, progress=False)
    dist.barrier()
    wall = time.perf_counter() - w0
    if dist.get_rank() == 0:
        (out / f"world{dist.get_world_size()}.json").write_text(
            json.dumps({"value": res.value, "stderr": res.stderr, "nfe": list(res.nfe), "seconds": wall,
                        "world_size": res.provenance["world_size"]}))
    dist.destroy_process_group()


def bench_dist() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        for world in (1, 2):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                   str(Path(__file__).resolve()), "--worker", out]
            w0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            total = time.perf_counter() - w0
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            r = json.loads((Path(out) / f"world{world}.json").read_text())
            rows.append({"processes": world, "pfd": r["value"], "stderr": r["stderr"], "nfe": r["nfe"][1],
                         "evaluation (s)": r["seconds"], "torchrun total (s)": total})
    rows[1]["identical to 1 process"] = rows[1]["pfd"] == rows[0]["pfd"]
    rows[0]["identical to 1 process"] = True
    return rows


def plot(cost: list[dict], example: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    labels = [f"K={r['K']}, d={r['d']}" for r in cost]
    x = range(len(cost))
    wdt = 0.27
    a.bar([i - wdt for i in x], [r["first call (s)"] for r in cost], wdt, label="monitor, first call")
    a.bar(list(x), [r["later call (s)"] for r in cost], wdt, label="monitor, later calls")
    a.bar([i + wdt for i in x], [r["both maps (s)"] for r in cost], wdt, label="pfd.distance, both maps")
    a.set_xticks(list(x), labels)
    a.set_ylabel("seconds per evaluation")
    a.set_title(f"cost per evaluation (n={cost[0]['n']}, Heun 35 NFE each)")
    a.legend(fontsize=8)
    curve = example["curve"]
    b.plot([c["step"] for c in curve], [c["pfd"] for c in curve], "o-", ms=3)
    b.fill_between([c["step"] for c in curve], [c["ci95"][0] for c in curve], [c["ci95"][1] for c in curve], alpha=0.3)
    b.set_yscale("log")
    b.set_xlabel("training step")
    b.set_ylabel("PFD")
    b.set_title("examples/train_with_pfd.py")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--example-steps", type=int, default=500)
    args = p.parse_args()
    if args.worker:
        dist_worker(Path(args.worker))
        return
    torch.set_num_threads(1)
    cost = bench_cost([(8, 2), (32, 8), (128, 16)], n=args.n)
    print("1. Cost of a monitored evaluation (reference and student cost the same; median of 3; 1 thread;")
    print(f"   wall clock and this process's CPU time; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)\n")
    print(format_table(cost, ["K", "d", "n", "nfe per map", "first call (s)", "later call (s)", "both maps (s)",
                              "speedup (wall)", "later call CPU (s)", "both maps CPU (s)", "speedup (CPU)"]))
    ex = bench_example(args.example_steps, 100, 4096)
    ex_row = {"train step (ms)": 1e3 * ex["train_step_seconds"], "evaluation (ms)": 1e3 * ex["evaluation_seconds"],
              "evaluation / train step": ex["evaluation_in_train_steps"],
              "overhead at every=100 (%)": 100 * ex["overhead_fraction"],
              "first evaluation (s)": ex["first_evaluation_seconds"], "final pfd": ex["curve"][-1]["pfd"]}
    print(f"\n2. Monitor overhead in examples/train_with_pfd.py ({args.example_steps} steps, n=4096, MLP batch 512)\n")
    print(format_table([ex_row], list(ex_row)))
    dist_rows = bench_dist()
    print(f"\n3. torchrun, gloo CPU (K={DIST_K}, d={DIST_D}, n={DIST_N}, Heun 35 NFE per map, OMP_NUM_THREADS=1)\n")
    print(format_table(dist_rows, ["processes", "pfd", "nfe", "evaluation (s)", "torchrun total (s)", "identical to 1 process"],
                       floatfmt=".10g"))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "monitor.json", {"cost": cost, "example": ex_row, "example_curve": ex["curve"],
                                      "distributed": dist_rows, "cpu_count": os.cpu_count(),
                                      "load_average": os.getloadavg(), "versions": versions()})
    plot(cost, ex, out / "monitor.png")
    print(f"\nwrote {out / 'monitor.json'}")


if __name__ == "__main__":
    main()
