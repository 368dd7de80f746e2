"""The ``pfd`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pfd._version import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pfd",
        description="Probability flow distance for (distilled) diffusion models.",
    )
    parser.add_argument("--version", action="version", version=f"pfd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="score real students against an analytic Gaussian-mixture teacher",
        description="Score real students (cheap samplers, a wrong mixture, memorizing models, a "
        "one-step distilled MLP) against an analytic 2-D Gaussian-mixture teacher.",
    )
    demo.add_argument("--n", type=int, default=4096, help="noise samples (default 4096)")
    demo.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    demo.add_argument("--batch-size", type=int, default=1024, help="samples per batch (value-neutral)")
    demo.add_argument("--train-steps", type=int, default=1500, help="training steps of the one-step student")
    demo.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    demo.add_argument("--out", help="also write the JSON report to this file (atomically)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")

    grid = sub.add_parser(
        "grid",
        help="print a K-segment time grid of a Gaussian mixture and its amplification factors",
        description="Print a K-segment time grid on [t_min, t_max] (uniform, logsnr, edm, balanced-sum, "
        "balanced-plus, or all) with the stability increments dLambda_j and amplification factors "
        "exp(dLambda_j) of each segment (Groenwall bounds on the segment maps' Lipschitz constants).",
    )
    grid.add_argument("--K", type=int, default=8, help="number of segments (default 8)")
    grid.add_argument("--kind", default="balanced-sum", help="grid kind or 'all' (default balanced-sum)")
    grid.add_argument("--mixture", default="two-mode", choices=sorted(GRID_PRESETS), help="built-in mixture")
    grid.add_argument("--gmm", help="JSON file with a mixture ({weights, means, covs}); overrides --mixture")
    grid.add_argument("--t-max", type=float, default=3.0, help="noise end of the grid (default 3.0)")
    grid.add_argument("--t-min", type=float, default=0.01, help="data end of the grid (default 0.01)")
    grid.add_argument("--process", default="ou", choices=["ou", "vp", "ve", "edm"], help="forward process (default ou)")
    grid.add_argument("--rate", default="sum", choices=["sum", "plus"], help="rate of the reported dLambda (default sum)")
    grid.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


# built-in mixtures for `pfd grid`: (weights, means, isotropic variances)
GRID_PRESETS = {
    "two-mode": ([0.5, 0.5], [[-1.0], [1.0]], [0.01, 0.01]),
    "two-mode-wide": ([0.5, 0.5], [[-1.0], [1.0]], [0.25, 0.25]),
    "four-mode": ([0.25] * 4, [[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], [0.01] * 4),
}


def _cmd_grid(args: argparse.Namespace) -> int:
    import math

    import pfd
    from pfd.report import format_table, to_jsonable

    if args.K < 1:
        raise ValueError("--K must be >= 1")
    pfd.schedules.check_time_range(args.t_min, args.t_max)
    if args.gmm:
        with open(args.gmm) as fh:
            gmm = pfd.GaussianMixture.from_dict(json.load(fh))
        label = args.gmm
    else:
        gmm = pfd.GaussianMixture(*GRID_PRESETS[args.mixture])
        label = args.mixture
    kinds = list(pfd.stability.GRID_MAKERS) if args.kind == "all" else [args.kind]
    for k in kinds:
        if k not in pfd.stability.GRID_MAKERS:
            raise ValueError(f"--kind must be one of {pfd.stability.GRID_MAKERS} or 'all', got {k!r}")
    proc = pfd.schedules.get_process(args.process)
    total = pfd.stability.cumulative(gmm, args.t_min, args.t_max, proc, args.rate)
    report = {"mixture": label, "process": proc.kind, "rate": args.rate, "K": args.K, "t_max": args.t_max,
              "t_min": args.t_min, "Lambda_total": total, "bounds": pfd.stability.bound_info(gmm), "grids": {}}
    for k in kinds:
        times = pfd.stability.make_grid(k, args.K, args.t_min, args.t_max, gmm, proc)
        inc = pfd.stability.segment_increments(gmm, times, proc, args.rate)
        rows = [{"j": j + 1, "t_from": float(times[j]), "t_to": float(times[j + 1]),
                 "sigma_ve_from": float(proc.sigma_ve(float(times[j]))), "sigma_ve_to": float(proc.sigma_ve(float(times[j + 1]))),
                 "dLambda": float(inc[j]), "amplification": math.exp(float(inc[j]))} for j in range(args.K)]
        report["grids"][k] = {"times": times.tolist(), "segments": rows,
                              "bound_score": pfd.stability.propagated_error_bound([1.0] * args.K, inc)}
    if args.json:
        print(json.dumps(to_jsonable(report), indent=2))
        return 0
    print(f"mixture {label}  process {proc.kind}  rate {args.rate}  K {args.K}  "
          f"Lambda(t_min, t_max) = {total:.6g}  (exp = {math.exp(min(total, 700)):.4g})")
    for k, g in report["grids"].items():
        print(f"\n{k}: sum_j exp(sum_(i>j) dLambda_i) = {g['bound_score']:.4g}")
        print(format_table(g["segments"], ["j", "t_from", "t_to", "sigma_ve_from", "sigma_ve_to", "dLambda", "amplification"]))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pfd.demo import format_demo, run_demo
    from pfd.report import to_jsonable, write_json

    for name in ("n", "train_steps", "batch_size"):
        if getattr(args, name) < (2 if name == "n" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be >= {2 if name == 'n' else 1}")
    if args.seed < 0:
        raise ValueError("--seed must be >= 0")
    report = run_demo(n=args.n, seed=args.seed, batch_size=args.batch_size,
                      progress=not args.no_progress, train_steps=args.train_steps)
    if args.out:
        write_json(args.out, report)
    if args.json:
        print(json.dumps(to_jsonable(report), indent=2))
    else:
        print(format_demo(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "demo":
            return _cmd_demo(args)
        if args.command == "grid":
            return _cmd_grid(args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"pfd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
