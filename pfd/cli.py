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
    return parser


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
    except (ValueError, TypeError, OSError) as exc:
        print(f"pfd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
