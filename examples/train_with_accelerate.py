"""Distil a one-step student with Hugging Face accelerate (the loop of diffusers' training scripts), tracking PFD.

The loop is the one ``accelerate launch`` runs: ``Accelerator.prepare`` wraps the model, optimizer
and data loader; ``accumulate``/``backward``/``sync_gradients`` handle gradient accumulation; the
state is saved with ``save_state`` and restored with ``load_state``. A :class:`pfd.PFDMonitor`
scores the student every ``--every`` optimizer steps on a fixed noise bank: every process calls
it (under several processes the bank is split across them and the value is the single-process
value); only the main process prints and writes the log.

The teacher is the analytic PF-ODE map of pfd's 2-D demo mixture (Heun, 18 points); the student
an MLP G(z) regressed onto teacher pairs from noise disjoint from the monitor's bank.

Writes to ``--out``: ``pfd_curve.jsonl`` (the monitor's log), ``state/`` (accelerate's
checkpoint: model, optimizer, RNG, plus the monitor's state; rerun with ``--resume`` and more
``--steps`` to continue the same curve) and ``summary.json``.

    python examples/train_with_accelerate.py --steps 600 --every 100 --out examples/out-accelerate
    accelerate launch --num_processes 2 examples/train_with_accelerate.py --out examples/out-accelerate
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

import pfd
from pfd.analytic.teachers import hexagon_teacher
from pfd.noise import derive_seed
from pfd.report import write_json


def make_student(dim: int, width: int = 64, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(seed, 11) % (2**63))
        return torch.nn.Sequential(torch.nn.Linear(dim, width), torch.nn.SiLU(), torch.nn.Linear(width, width),
                                   torch.nn.SiLU(), torch.nn.Linear(width, dim))


def teacher_pairs(teacher, dim: int, n: int, seed: int) -> torch.utils.data.TensorDataset:
    """Training pairs (z, teacher(z)) on canonical noise of a seed the monitor's bank does not use."""
    z = pfd.canonical_noise(n, (dim,), seed=seed + 1)
    return torch.utils.data.TensorDataset(z.float(), teacher(z).float())


def train(args: argparse.Namespace) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(args.out)
    accelerator = Accelerator(cpu=args.cpu, gradient_accumulation_steps=args.grad_accum)
    set_seed(args.seed)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    gmm = hexagon_teacher()
    teacher = gmm.ode_map(name="demo mixture teacher")
    group = torch.distributed.group.WORLD if accelerator.num_processes > 1 else None
    monitor = pfd.PFDMonitor(teacher, n=args.noise, seed=args.seed, every=args.every, group=group,
                             log_path=out / "pfd_curve.jsonl" if accelerator.is_main_process else None)
    model = make_student(gmm.dim, seed=args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loader = torch.utils.data.DataLoader(teacher_pairs(teacher, gmm.dim, args.pairs, args.seed),
                                         batch_size=args.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    model, opt, loader = accelerator.prepare(model, opt, loader)
    step = 0
    state_dir = out / "state"
    if args.resume and (state_dir / "pfd_monitor.json").is_file():
        accelerator.load_state(str(state_dir))
        saved = json.loads((state_dir / "pfd_monitor.json").read_text())
        monitor.load_state_dict(saved["monitor"])
        step = saved["step"]
        accelerator.print(f"resumed at step {step} with {len(monitor.history)} evaluations")
    if step == 0:
        _evaluate(monitor, accelerator, model, 0)
    while step < args.steps:
        for z, y in loader:
            with accelerator.accumulate(model):
                loss = (model(z) - y).pow(2).sum(1).mean()
                accelerator.backward(loss)
                opt.step()
                opt.zero_grad()
            if accelerator.sync_gradients:
                step += 1
                _evaluate(monitor, accelerator, model, step)
                if step >= args.steps:
                    break
    accelerator.save_state(str(state_dir))
    if accelerator.is_main_process:
        write_json(state_dir / "pfd_monitor.json", {"step": step, "monitor": monitor.state_dict()})
        summary = {"config": vars(args), "processes": accelerator.num_processes, "curve": monitor.history,
                   "final_pfd": monitor.history[-1]["pfd"] if monitor.history else None}
        write_json(out / "summary.json", summary)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"curve": monitor.history, "steps": step, "model": accelerator.unwrap_model(model), "teacher": teacher}


def _evaluate(monitor: pfd.PFDMonitor, accelerator, model: torch.nn.Module, step: int) -> None:
    rec = monitor.maybe_evaluate(accelerator.unwrap_model(model), step)  # every process calls it
    if rec is not None:
        accelerator.print(f"step {step:5d}  PFD {rec['pfd']:.4f} ± {rec['stderr']:.4f}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps (after gradient accumulation)")
    ap.add_argument("--every", type=int, default=100, help="PFD evaluation every this many optimizer steps")
    ap.add_argument("--noise", type=int, default=1024, help="noise samples of the monitor's bank")
    ap.add_argument("--pairs", type=int, default=8192, help="teacher pairs to train on")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu", action="store_true", help="force the CPU even where a GPU is visible")
    ap.add_argument("--resume", action="store_true", help="continue from --out/state")
    ap.add_argument("--out", default="examples/out-accelerate")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
