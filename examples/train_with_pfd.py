"""Distil a one-step generator from a Gaussian-mixture diffusion teacher, tracking the PFD.

A complete small training loop (CPU, about a minute): the teacher is the analytic PF-ODE map of
pfd's 2-D demo mixture (Heun, 18 grid points, 35 NFE); the student is an MLP G(z) trained by
regression on teacher noise-to-data pairs drawn online from noise disjoint from the evaluation
noise. A :class:`pfd.PFDMonitor` scores the student every ``--every`` steps on a fixed bank of
``--n`` noise vectors; the teacher's outputs on that bank are computed once.

Writes to ``--out``: ``pfd_curve.jsonl`` (the monitor's append-only log), ``checkpoint.pt``
(model, optimizer and monitor state: rerun with ``--resume`` and more ``--steps`` to continue
the same curve), ``summary.json`` (curve, timings, the monitor's overhead per evaluation in
training steps) and ``pfd_curve.png`` (if matplotlib is installed).

    python examples/train_with_pfd.py --steps 2000 --every 100 --out examples/out
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import pfd
from pfd.analytic.teachers import hexagon_teacher
from pfd.estimator import versions
from pfd.noise import derive_seed
from pfd.report import format_table, write_json


def make_student(dim: int, width: int = 128, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(seed, 11) % (2**63))
        return torch.nn.Sequential(
            torch.nn.Linear(dim, width), torch.nn.SiLU(),
            torch.nn.Linear(width, width), torch.nn.SiLU(),
            torch.nn.Linear(width, width), torch.nn.SiLU(),
            torch.nn.Linear(width, dim),
        )


def train(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gmm = hexagon_teacher()
    teacher = gmm.ode_map(name="demo mixture teacher")  # Heun, 18 grid points, 35 NFE
    monitor = pfd.PFDMonitor(teacher, n=args.n, seed=args.seed, every=args.every, log_path=out / "pfd_curve.jsonl",
                             cache_dir=out)
    student = make_student(gmm.dim, seed=args.seed)
    opt = torch.optim.Adam(student.parameters(), lr=args.lr)
    start = 0
    ckpt_path = out / "checkpoint.pt"
    if args.resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, weights_only=True)
        student.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        monitor.load_state_dict(ckpt["monitor"])
        start = ckpt["step"]
        print(f"resumed at step {start} with {len(monitor.history)} evaluations")
    # training pairs: canonical noise of a different seed than the monitor's bank, in chunks
    chunk = 8192
    gen = torch.Generator().manual_seed(derive_seed(args.seed, 99))
    pair_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    teacher_seconds = 0.0

    def pairs(c: int) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal teacher_seconds
        if c not in pair_cache:
            t0 = time.perf_counter()
            z = pfd.canonical_noise(chunk, (gmm.dim,), seed=args.seed + 1, start=c * chunk)
            pair_cache[c] = (z.float(), teacher(z).float())
            teacher_seconds += time.perf_counter() - t0
        return pair_cache[c]

    step_times = []
    for step in range(start, args.steps + 1):
        rec = monitor.maybe_evaluate(student, step)  # None between evaluations (and at steps done before a resume)
        if rec is not None:
            print(f"step {step:5d}  PFD {rec['pfd']:.4f} ± {rec['stderr']:.4f}  ({rec['seconds']:.3f} s)")
        if step == args.steps:
            break
        z, y = pairs(step * args.batch // chunk % args.pair_chunks)
        idx = torch.randint(0, chunk, (args.batch,), generator=gen)
        t0 = time.perf_counter()
        loss = (student(z[idx]) - y[idx]).pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step_times.append(time.perf_counter() - t0)
    torch.save({"model": student.state_dict(), "opt": opt.state_dict(), "monitor": monitor.state_dict(),
                "step": args.steps}, ckpt_path)

    hist = monitor.history
    later = [h["seconds"] for h in hist if h["reference_seconds"] == 0]
    step_s = sum(step_times) / max(len(step_times), 1)
    eval_s = sum(later) / len(later) if later else float("nan")
    summary = {
        "teacher": teacher.describe(),
        "student": "MLP 2-128-128-128-2, one step",
        "n": args.n, "seed": args.seed, "every": args.every, "steps": args.steps, "batch": args.batch,
        "curve": [{"step": h["step"], "pfd": h["pfd"], "stderr": h["stderr"], "ci95": h["ci95"]} for h in hist],
        "train_step_seconds": step_s,
        "teacher_pairs_seconds": teacher_seconds,
        "first_evaluation_seconds": next((h["seconds"] for h in hist if h["reference_seconds"] > 0), None),
        "bank_reference_seconds": sum(h["reference_seconds"] for h in hist),
        "evaluation_seconds": eval_s,
        "evaluation_in_train_steps": eval_s / step_s,
        "overhead_fraction": (eval_s / args.every) / step_s,
        "versions": versions(),
    }
    write_json(out / "summary.json", summary)
    _plot(hist, out / "pfd_curve.png")
    return summary


def _plot(hist: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    steps = [h["step"] for h in hist]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, [h["pfd"] for h in hist], "o-", ms=3, label="PFD(teacher, student)")
    ax.fill_between(steps, [h["ci95"][0] for h in hist], [h["ci95"][1] for h in hist], alpha=0.3, label="95% CI")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("PFD")
    ax.set_title("one-step distillation of a 2-D mixture teacher")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--n", type=int, default=4096, help="noise bank size of the monitor")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--pair-chunks", type=int, default=4, help="chunks of 8192 teacher pairs used for training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="examples/out")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for this tiny MLP)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    s = train(args)
    rows = [{"step": c["step"], "PFD": c["pfd"], "± se": c["stderr"]} for c in s["curve"]]
    print(format_table(rows, ["step", "PFD", "± se"]))
    print(f"train step {1e3 * s['train_step_seconds']:.2f} ms; PFD evaluation (teacher cached) "
          f"{1e3 * s['evaluation_seconds']:.1f} ms = {s['evaluation_in_train_steps']:.1f} train steps; "
          f"overhead at every={args.every}: {100 * s['overhead_fraction']:.1f}% "
          f"(first evaluation incl. teacher bank: {s['first_evaluation_seconds']:.2f} s)")


if __name__ == "__main__":
    main()
