"""The ``pfd`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pfd._version import __version__
from pfd.analytic.teachers import TEACHERS, get_teacher

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
    demo.add_argument("--solver-error", default="cheap", choices=SOLVER_ERROR_CHOICES,
                      help="estimate each PFD's PF-ODE solver error: cheap (default), thorough or off (off saves "
                      "about a third of the demo's time: it re-solves the dopri5 teacher at tighter tolerances)")

    grid = sub.add_parser(
        "grid",
        help="print a K-segment time grid of a Gaussian mixture and its amplification factors",
        description="Print a K-segment time grid on [t_min, t_max] (uniform, logsnr, edm, balanced-sum, "
        "balanced-plus, or all) with the stability increments dLambda_j and amplification factors "
        "exp(dLambda_j) of each segment (Groenwall bounds on the segment maps' Lipschitz constants).",
    )
    grid.add_argument("--K", type=int, default=8, help="number of segments (default 8)")
    grid.add_argument("--kind", default="balanced-sum", help="grid kind or 'all' (default balanced-sum)")
    grid.add_argument("--mixture", default="two-mode", choices=sorted(TEACHERS),
                      help="named analytic teacher (pfd.analytic.teachers)")
    grid.add_argument("--gmm", help="JSON file with a mixture ({weights, means, covs}); overrides --mixture")
    grid.add_argument("--t-max", type=float, default=3.0, help="noise end of the grid (default 3.0)")
    grid.add_argument("--t-min", type=float, default=0.01, help="data end of the grid (default 0.01)")
    grid.add_argument("--process", default="ou", choices=["ou", "vp", "ve", "edm"], help="forward process (default ou)")
    grid.add_argument("--rate", default="sum", choices=["sum", "plus"], help="rate of the reported dLambda (default sum)")
    grid.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_analysis_parsers(sub)
    _add_score_parser(sub)
    return parser


SOLVER_ERROR_CHOICES = ["cheap", "thorough", "off"]


def _solver_error_mode(text: str) -> str | bool:
    return False if text == "off" else text


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
        gmm = get_teacher(args.mixture)
        if not hasattr(gmm, "n_components"):
            raise ValueError(f"--mixture {args.mixture} is a conditional teacher; pfd grid takes an unconditional mixture")
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
        times = pfd.stability.make_time_grid(k, args.K, args.t_min, args.t_max, gmm, proc)
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


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return vals


def _add_common(p: argparse.ArgumentParser, skip: tuple[str, ...] = (), **defaults: Any) -> None:
    """The options of a :class:`pfd.analysis.TrainConfig` (one per field; ``defaults`` overrides
    the dataclass defaults, ``skip`` leaves fields out) and those every analysis shares."""
    from dataclasses import MISSING, fields

    from pfd._train import TrainConfig

    p.add_argument("--teacher", default="cross4d",
                   help=f"named analytic teacher: one of {', '.join(sorted(TEACHERS))} (default cross4d)")
    for f in fields(TrainConfig):
        if "help" not in f.metadata or f.name in skip:
            continue
        default = defaults.get(f.name, f.default if f.default is not MISSING else None)
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(default), default=default,
                       help=f"{f.metadata['help']} (default {default:g})")
    p.add_argument("--out-dir", default=".", help="folder for the JSON results and PNG plot (default .)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot (needs matplotlib: pfd[plot])")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_analysis_parsers(sub) -> None:
    m = sub.add_parser("mtog", help="memorization -> generalization sweep on an analytic teacher",
                       description="Train DSM MLP students over N x widths x seeds, measure E_gen and E_mem, fit the "
                       "transition per width and the best-collapsing exponent of |theta|. Resumable: finished runs "
                       "are kept in OUT_DIR/mtog_runs.jsonl and skipped on restart.")
    m.add_argument("--n-trains", type=_int_list, default=None,
                   help="comma-separated N values (default 4..256 in octaves; digits: 8..2048 in half-octaves)")
    m.add_argument("--widths", type=_int_list, default=[16, 48, 128], help="comma-separated MLP widths")
    m.add_argument("--seeds", type=_int_list, default=None, help="comma-separated run seeds (default 0; digits: 0..4)")
    f = m.add_argument_group("fair sweep (the default for --teacher digits, or whenever --sizes is given): each "
                             "student trained to its loss plateau, N* and the collapse exponent with bootstrap CIs")
    f.add_argument("--sizes", default=None, help="comma-separated mlp:WIDTH:DEPTH / conv:CHANNELS:BLOCKS "
                   "(default mlp:24:3,mlp:64:3,mlp:192:3,mlp:512:3)")
    f.add_argument("--max-steps", type=int, default=40000, help="step cap per student (default 40000)")
    f.add_argument("--target", choices=("sample", "posterior"), default="sample",
                   help="DSM regression target: the training point (sample, default) or the exact empirical "
                        "denoiser of the training set (posterior: same minimiser, far less gradient noise)")
    f.add_argument("--device", default="cpu", help="torch device for training and maps (default cpu)")
    f.add_argument("--processes", type=int, default=1, help="worker processes, one model size each (default 1)")
    f.add_argument("--wall-budget", type=float, default=None,
                   help="seconds after which training stops; unfinished sizes are checkpointed and continue on rerun")
    f.add_argument("--checkpoint-every", type=float, default=600.0,
                   help="seconds of training between a size's checkpoints (default 600; 0: only at the wall budget)")
    f.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates over seeds (default 200)")
    _add_common(m, skip=("width",), train_steps=3000)
    d = sub.add_parser("dynamics", help="E_gen / E_mem / losses per epoch of one student",
                       description="Train one DSM student, scoring it on the same noise every --eval-every epochs; "
                       "report early-learning minima and epoch-wise double descent. Resumable via a checkpoint.")
    d.add_argument("--n-train", type=int, default=64, help="training-set size N (default 64)")
    d.add_argument("--epochs", type=int, default=1000, help="epochs (default 1000)")
    d.add_argument("--eval-every", type=int, default=25, help="epochs between evaluations (default 25)")
    d.add_argument("--seed", type=int, default=0, help="dataset / initialisation seed (default 0)")
    _add_common(d, skip=("train_steps",), width=128)
    b = sub.add_parser("bias-variance", help="bias-variance decomposition over K training sets",
                       description="Train K DSM students on K independent training sets and decompose their mean E_gen^2 "
                       "into E_bias^2 + E_var (the empirical models of the same sets alongside).")
    b.add_argument("--n-train", type=_int_list, default=[16, 256], help="comma-separated training-set sizes")
    b.add_argument("--k", type=int, default=5, help="independent training sets (default 5)")
    b.add_argument("--seed", type=int, default=0, help="first dataset seed (default 0)")
    _add_common(b, width=48, train_steps=3000)


def _check_common(args: argparse.Namespace):
    """(teacher, out folder, TrainConfig) of an analysis subcommand's arguments."""
    from dataclasses import fields
    from pathlib import Path

    from pfd._train import TrainConfig

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    try:
        config = TrainConfig(**given, progress=not args.no_progress)
    except ValueError as exc:
        raise ValueError(f"--{str(exc).replace('_', '-')}") from None
    out = Path(args.out_dir)
    if not out.is_dir():
        raise ValueError(f"--out-dir {str(out)!r} is not an existing folder")
    teacher = get_teacher(args.teacher)
    if not hasattr(teacher, "n_components"):  # a ConditionalGaussianMixture
        raise ValueError(f"--teacher {args.teacher} is a conditional teacher; the generalization analyses take an "
                         "unconditional mixture (e.g. digits)")
    return teacher, out, config


def _check_outputs(out, names: Sequence[str], args: argparse.Namespace) -> None:
    """Every file a long command will write into --out-dir must be writable before any training
    (the message names the user's path, not a temporary file)."""
    from pfd.report import check_writable

    for name in names:
        if name.endswith(".png") and args.no_plot:
            continue
        check_writable(out / name, "--out-dir")


def _write_outputs(args: argparse.Namespace, out, stem: str, result: Any, plot: Callable[[Any], Any]) -> None:
    """OUT/<stem>.json holding ``result`` and, unless --no-plot, OUT/<stem>.png drawn by ``plot(path)``."""
    from pfd.report import write_json

    write_json(out / f"{stem}.json", result)
    if not args.no_plot:
        plot(out / f"{stem}.png")


def _cmd_mtog(args: argparse.Namespace) -> int:
    from pfd.analysis.mtog import mtog_scaling
    from pfd.analysis.plots import plot_mtog
    from pfd.report import format_table

    teacher, out, config = _check_common(args)
    if args.teacher == "digits" or args.sizes is not None:
        return _cmd_mtog_fair(args, out)
    args.n_trains = args.n_trains or [4, 8, 16, 32, 64, 128, 256]
    args.seeds = args.seeds or [0]
    if any(n < 2 for n in args.n_trains) or any(w < 1 for w in args.widths) or any(s < 0 for s in args.seeds):
        raise ValueError("--n-trains must be >= 2, --widths >= 1 and --seeds >= 0")
    _check_outputs(out, ("mtog_runs.jsonl", "mtog.json", "mtog.png"), args)
    res = mtog_scaling(teacher, args.n_trains, args.widths, args.seeds, out=out / "mtog_runs.jsonl", config=config)
    _write_outputs(args, out, "mtog", res, lambda png: plot_mtog(res, png))
    rows = [{"N": r["n_train"], "width": r["width"], "|θ|": r["n_params"], "seed": r["seed"], "E_gen": r["e_gen"],
             "E_mem": r["e_mem"]} for r in res["runs"]]
    print(format_table(rows, ["N", "width", "|θ|", "seed", "E_gen", "E_mem"]))
    for t in res["transitions"]["e_gen"]:
        print(f"width {t['width']} (|θ| = {t['n_params']}, sqrt = {t['sqrt_params']:.1f}): E_gen transition N* = "
              + ("-" if t["n_star"] is None else f"{t['n_star']:.1f}"))
    for f in res["failed_runs"]:
        print(f"FAILED: N={f['n_train']} width={f['width']} seed={f['seed']}: {f['error']}")
    c = res["collapse"]["e_gen"]
    print(f"best-collapsing exponent of |θ| (E_gen): {c['best_alpha']}; wrote {out / 'mtog.json'}"
          + (f"; {len(res['failed_runs'])} run(s) failed and are left out of the fits" if res["failed_runs"] else ""))
    return 0


def _cmd_mtog_fair(args: argparse.Namespace, out) -> int:
    from pfd.analysis.mtog import half_octaves, mtog_sweep
    from pfd.analysis.plots import plot_mtog_sweep

    sizes = (args.sizes or "mlp:24:3,mlp:64:3,mlp:192:3,mlp:512:3").split(",")
    n_trains = args.n_trains or half_octaves(8, 2048)
    seeds = args.seeds if args.seeds is not None else [0, 1, 2, 3, 4]
    if args.max_steps < 1 or args.processes < 1 or args.n_boot < 1:
        raise ValueError("--max-steps, --processes and --n-boot must be >= 1")
    train = {"max_steps": args.max_steps, "lr": args.lr, "batch_size": args.batch_size,
             "min_steps": min(2000, args.max_steps), "target": args.target}
    res = mtog_sweep(args.teacher, n_trains, sizes, seeds, out=out / "mtog_runs_fair.jsonl", train=train,
                     n_eval=args.n_eval, eval_seed=args.eval_seed, device=args.device, processes=args.processes,
                     wall_budget=args.wall_budget, n_boot=args.n_boot, progress=not args.no_progress,
                     checkpoint_every=args.checkpoint_every or None)
    _write_outputs(args, out, "mtog", res, lambda png: plot_mtog_sweep(res, png))
    for t in res["transitions"]:
        ci = t["n_star_ci95"]
        print(f"{t['size']} (|θ| = {t['params']}): E_gen transition N* = "
              + ("-" if t["n_star"] is None else f"{t['n_star']:.1f}")
              + ("" if ci is None else f", 95% CI [{ci[0]:.1f}, {ci[1]:.1f}]"))
    c = res["collapse"]
    print(f"collapse exponent alpha = {c.get('alpha')}, 95% CI {c.get('alpha_ci95')}; complete: {res['complete']}; "
          f"wrote {out / 'mtog.json'}")
    return 0


def _cmd_dynamics(args: argparse.Namespace) -> int:
    from pfd.analysis.dynamics import training_dynamics
    from pfd.analysis.plots import plot_dynamics
    from pfd.report import format_table

    teacher, out, config = _check_common(args)
    for name in ("n_train", "epochs", "eval_every"):
        if getattr(args, name) < (2 if name == "n_train" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be >= {2 if name == 'n_train' else 1}")
    if args.seed < 0:
        raise ValueError("--seed must be >= 0")
    _check_outputs(out, ("dynamics.pt", "dynamics.json", "dynamics.png"), args)
    res = training_dynamics(teacher, args.n_train, epochs=args.epochs, eval_every=args.eval_every, seed=args.seed,
                            checkpoint=out / "dynamics.pt", config=config)
    _write_outputs(args, out, "dynamics", res, lambda png: plot_dynamics([res], png))
    print(format_table(res["rows"], ["epoch", "e_gen", "e_mem", "train_loss", "heldout_loss"]))
    f = res["features"]
    m = f["minimum"]
    print(f"min E_gen {m['value']:.4g} at epoch {m['epoch']} (early-learning minimum: {m['early']}, rise after it "
          f"{m['rise_after']:.3g}); double descent: {len(f['double_descent'])} episode(s); wrote {out / 'dynamics.json'}")
    return 0


def _cmd_bias_variance(args: argparse.Namespace) -> int:
    from pfd.analysis.decomposition import bias_variance_study
    from pfd.analysis.plots import plot_bias_variance
    from pfd.report import format_table

    teacher, out, config = _check_common(args)
    if any(n < 2 for n in args.n_train) or args.k < 2 or args.seed < 0:
        raise ValueError("--n-train must be >= 2, --k >= 2 and --seed >= 0")
    _check_outputs(out, ("bias_variance.json", "bias_variance.png"), args)
    studies = [bias_variance_study(teacher, n, args.k, seed=args.seed, config=config) for n in args.n_train]
    _write_outputs(args, out, "bias_variance", {"studies": studies}, lambda png: plot_bias_variance(studies, png))
    rows = [{"N": s["config"]["n_train"], "model": kind, "E_bias²": s[kind]["bias2"], "E_var": s[kind]["var"],
             "E_bias² plug-in": s[kind]["bias2_plugin"], "E_var plug-in": s[kind]["var_plugin"],
             "mean E_gen²": s[kind]["mean_gen2"], "rel. residual": s[kind]["identity_residual"]}
            for s in studies for kind in ("students", "empirical")]
    print(format_table(rows, list(rows[0]), floatfmt=".6g"))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pfd.demo import format_demo, run_demo
    from pfd.report import to_jsonable, write_json

    for name in ("n", "train_steps", "batch_size"):
        if getattr(args, name) < (2 if name == "n" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be >= {2 if name == 'n' else 1}")
    if args.seed < 0:
        raise ValueError("--seed must be >= 0")
    if args.out:
        from pfd.report import check_writable

        check_writable(args.out, "--out")
    report = run_demo(n=args.n, seed=args.seed, batch_size=args.batch_size,
                      progress=not args.no_progress, train_steps=args.train_steps,
                      solver_error=_solver_error_mode(args.solver_error))
    if args.out:
        write_json(args.out, report)
    if args.json:
        print(json.dumps(to_jsonable(report), indent=2))
    else:
        print(format_demo(report))
    return 0


SCORE_EPILOG = """SPEC: module:function (a factory; dotted module on PYTHONPATH or path/to/file.py), a model file
(TorchScript *.pt, *.ts; a torch.save'd module with --allow-pickle), a diffusers folder (save_pretrained: a
pipeline, or a model folder with --student-arg scheduler=FOLDER) or gmm:<mixture.json>. Examples:
  pfd score --reference gmm:teacher.json --student models.py:make_student --student-type one-step --shape 2
  pfd score --reference teacher.pt --student student.pt --student-type consistency --shape 3,32,32 --json --out s.json
  pfd score --reference ddpm-folder --student ddpm-folder --student-solver ddim --student-steps 10
"""


def _score_shape(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 3,32,32, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 3,32,32, got {text!r}")
    return vals


def _add_score_parser(sub) -> None:
    from pfd.spec import ADAPTERS

    s = sub.add_parser("score", help="PFD between a reference model and a student stored on disk",
                       description="Score a student against a reference (teacher): load both from their SPECs, wrap\n"
                       "them with the declared adapter types, and estimate PFD with a 95% confidence interval on\n"
                       "shared canonical noise. Progress on stderr, result (table or JSON with provenance) on stdout.",
                       epilog=SCORE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    for role in ("reference", "student"):
        s.add_argument(f"--{role}", required=True, metavar="SPEC", help=f"the {role} model (see SPEC below)")
        s.add_argument(f"--{role}-type", default=None, choices=ADAPTERS, metavar="TYPE",
                       help=f"adapter type of the {role}: {', '.join(ADAPTERS)} (default denoiser; a diffusers "
                       "folder's scheduler names it)")
        s.add_argument(f"--{role}-solver", default=None, metavar="NAME",
                       help=f"PF-ODE solver of the {role} (default --solver)")
        s.add_argument(f"--{role}-steps", type=int, default=None, metavar="N",
                       help=f"grid points of the {role} (default --steps)")
        s.add_argument(f"--{role}-weights", default=None, metavar="FILE",
                       help=f"state_dict file (torch weights-only or .safetensors) loaded into the module the {role} "
                       "factory builds")
        s.add_argument(f"--{role}-arg", action="append", default=[], metavar="KEY=VALUE",
                       help=f"keyword argument of the {role} factory (repeatable; VALUE parsed as JSON, else a string)")
        s.add_argument(f"--{role}-schedule", action="append", default=[], metavar="KEY=VALUE",
                       help=f"adapter parameter of the {role} (repeatable): sigma_max, sigma_min, beta_start, beta_end, "
                       "train_steps, beta_schedule, process, time, t_scale, grid, signature, ... (see docs/quickstart.md)")
    s.add_argument("--kind", default="trajectory", choices=["trajectory", "distribution"],
                   help="what the student was trained to match (default trajectory); distribution students are "
                   "scored by their raw map with a coupling warning")
    s.add_argument("--n", type=int, default=10_000, help="noise samples (default 10000)")
    s.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    s.add_argument("--solver", default="heun", help="PF-ODE solver of diffusion models (default heun; peer names such "
                   "as ddim, dpmpp_2m, dpmpp_3m are accepted, see docs/core.md)")
    s.add_argument("--steps", type=int, default=None, help="grid points of fixed-grid solvers (default 18; adaptive "
                   "solvers such as dopri5 choose their own steps and refuse --steps)")
    s.add_argument("--allow-pickle", action="store_true", help="load torch.save files of whole models (a pickle runs "
                   "code stored in the file: only for files you trust)")
    s.add_argument("--labels", metavar="SPEC", help="conditions for conditional models, shared by both: a number of "
                   "classes K (uniform), a JSON list of class probabilities, or a .pt/.npy file of class ids (n,) or "
                   "embeddings (n, ...); needs conditional models (see --reference-schedule condition=...)")
    s.add_argument("--guidance", type=float, default=None, metavar="W", help="classifier-free guidance scale of the "
                   "reference: D_w = D(null) + (1 + w)(D(c) - D(null)); needs --reference-schedule condition=KEY and "
                   "null_condition=VALUE")
    s.add_argument("--by-label", action="store_true", help="also report the PFD of each class (class-id labels)")
    s.add_argument("--batch-size", type=int, default=1024, help="samples per batch (value-neutral)")
    s.add_argument("--shape", type=_score_shape, help="shape of one sample, e.g. 2 or 3,32,32 (needed unless a model "
                   "declares it)")
    s.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    s.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    s.add_argument("--out", help="also write the JSON result to this file (atomically; nothing is written on error)")
    s.add_argument("--no-progress", action="store_true", help="hide progress bars")
    s.add_argument("--solver-error", default="cheap", choices=SOLVER_ERROR_CHOICES,
                   help="estimate the PF-ODE solver error of the PFD from a refined solve of a subsample: cheap "
                   "(default, ~25%% extra work), thorough (~100%%) or off")
    s.add_argument("--rtol", type=float, default=None, metavar="R",
                   help="re-solve diffusion models on the cheapest unipc3 grid whose estimated solver error is "
                   "below R x PFD (e.g. 0.005); overrides --solver/--steps for them and reports the choice")

    def one_line_error(message: str) -> None:  # argparse's default prints the whole usage first
        s.exit(2, f"pfd score: error: {message} (see pfd score --help)\n")

    s.error = one_line_error  # type: ignore[method-assign]


def _parse_labels(text: str | None):
    """``--labels``: K, a JSON list of class probabilities, or a .pt/.npy file of ids/embeddings."""
    if text is None:
        return None
    from pathlib import Path

    import torch

    t = text.strip()
    try:
        val = json.loads(t)
    except json.JSONDecodeError:
        val = None
    if isinstance(val, int) and not isinstance(val, bool):
        if val < 1:
            raise ValueError(f"--labels: a number of classes must be >= 1, got {val}")
        return val
    if isinstance(val, list):
        if not val or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in val):
            raise ValueError(f"--labels: expected a JSON list of class probabilities, got {t!r}")
        return [float(v) for v in val]
    path = Path(t)
    if not path.is_file():
        raise ValueError(f"--labels: expected a number of classes, a JSON list of probabilities or a .pt/.npy file; "
                         f"{t!r} is none of these (no such file)")
    try:
        if path.suffix == ".npy":
            import numpy as np

            return torch.from_numpy(np.load(path, allow_pickle=False))
        out = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"--labels: cannot read {t!r} as a tensor file ({type(exc).__name__}: {exc})") from None
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"--labels: {t!r} must hold one tensor of labels, got {type(out).__name__}")
    return out


def _refuse_out_onto_inputs(args: argparse.Namespace) -> None:
    """--out must not be any file the command reads (a model SPEC's file, a factory module, weights)."""
    from pathlib import Path

    from pfd.spec import input_files, same_file

    for role in ("reference", "student"):
        weights = getattr(args, f"{role}_weights", None)
        files = input_files(getattr(args, role)) + ([Path(weights)] if weights else [])
        if any(same_file(args.out, f) for f in files):
            raise ValueError(f"--out {args.out!r} is one of the {role} model's files ({getattr(args, role)}"
                             f"{', --' + role + '-weights ' + str(weights) if weights else ''}); writing the result "
                             "there would destroy it: choose another --out")


def _role_solver(args: argparse.Namespace, role: str) -> tuple[str, int | None]:
    """The solver and grid points of one model: its own options, else the shared --solver/--steps.

    Steps apply to fixed-grid solvers only (default 18): giving them with an adaptive solver
    (dopri5, ...) is an error naming both options, instead of being silently ignored."""
    from pfd.maps import DEFAULT_STEPS
    from pfd.solvers import get_solver

    own_solver = getattr(args, f"{role}_solver", None)
    solver = own_solver or args.solver
    own_steps = getattr(args, f"{role}_steps", None)
    steps = own_steps if own_steps is not None else args.steps
    if get_solver(solver).adaptive:
        if steps is not None:
            s_opt = f"--{role}-steps" if own_steps is not None else "--steps"
            v_opt = f"--{role}-solver" if own_solver else "--solver"
            raise ValueError(f"{s_opt} {steps} does not apply to {v_opt} {solver}: an adaptive solver chooses its own "
                             f"steps; drop {s_opt}, or use a fixed-grid solver (heun, euler, rk4, dpm2m, ...)")
        return solver, None
    return solver, DEFAULT_STEPS if steps is None else steps


def _score_report(args: argparse.Namespace, res, kv: dict) -> dict:
    import pfd

    roles = {}
    for role, label in (("reference", "a"), ("student", "b")):
        solver, steps = _role_solver(args, role)
        source = res.provenance[label].get("source") or {}
        roles[role] = {"spec": getattr(args, role), "type": getattr(args, f"{role}_type") or source.get("adapter", "denoiser"),
                       "args": kv[f"{role}_arg"], "schedule": kv[f"{role}_schedule"], "solver": solver, "steps": steps,
                       "weights": getattr(args, f"{role}_weights"), "map": res.provenance[label]}
    prov = {k: v for k, v in res.provenance.items() if k not in ("a", "b", "auto_solver")}
    return {
        "command": "score",
        "value": res.value,
        "stderr": res.stderr,
        "ci95": list(res.ci95),
        "n": res.n,
        "mean_sq": res.mean_sq,
        "nfe": {"reference": res.nfe[0], "student": res.nfe[1]},
        "kind": args.kind,
        "reference": roles["reference"],
        "student": roles["student"],
        "settings": {"seed": args.seed, "solver": args.solver, "steps": args.steps, "batch_size": args.batch_size,
                     "allow_pickle": args.allow_pickle,
                     "device": args.device, "shape": list(prov.get("shape") or [])},
        "provenance": {**prov, "pfd_version": pfd.__version__},
        "solver_error": None if res.solver_error is None else {k: v for k, v in res.solver_error.to_dict().items()
                                                               if k != "seconds"},
        **({"auto_solver": _untimed(res.provenance["auto_solver"])} if "auto_solver" in res.provenance else {}),
        "timing": {"seconds": res.seconds,
                   **({} if res.solver_error is None else {"solver_error_seconds": res.solver_error.seconds}),
                   **({"rtol_seconds_total": res.provenance["auto_solver"]["seconds_total"]}
                      if "auto_solver" in res.provenance else {})},
    }


def _cmd_score(args: argparse.Namespace) -> int:
    try:
        return _run_score(args)
    except (ValueError, TypeError, OSError, ArithmeticError, RuntimeError, ImportError) as exc:
        print(f"pfd score: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


def _run_score(args: argparse.Namespace) -> int:
    import warnings

    import pfd
    from pfd.maps import map_shape
    from pfd.report import check_writable, format_table, to_jsonable, write_json
    from pfd.solvers import get_solver
    from pfd.spec import LabelledMap, load_map, parse_assignments, resolve_device

    if args.n < 2:
        raise ValueError(f"--n must be >= 2 (a confidence interval needs two samples), got {args.n}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    for opt in ("steps", "reference_steps", "student_steps"):
        val = getattr(args, opt)
        if val is not None and val < 2:
            raise ValueError(f"--{opt.replace('_', '-')} must be >= 2, got {val}")
    if args.rtol is not None and not 0 < args.rtol < 1:
        raise ValueError(f"--rtol must be a relative error in (0, 1), got {args.rtol}")
    for opt in ("solver", "reference_solver", "student_solver"):
        if getattr(args, opt) is not None:
            try:
                get_solver(getattr(args, opt))
            except ValueError as exc:
                raise ValueError(f"--{opt.replace('_', '-')}: {exc}") from None
    resolve_device(args.device, name="--device")
    if args.out:
        check_writable(args.out, "--out")
        _refuse_out_onto_inputs(args)
    kv = {f"{role}_{what}": parse_assignments(getattr(args, f"{role}_{what}"), f"--{role}-{what}")
          for role in ("reference", "student") for what in ("arg", "schedule")}
    labels = _parse_labels(args.labels)
    if args.by_label and labels is None:
        raise ValueError("--by-label needs --labels (class ids or class probabilities)")
    if args.guidance is not None:
        if "guidance" in kv["reference_schedule"]:
            raise ValueError("--guidance and --reference-schedule guidance=... both set the reference's guidance; give one")
        kv["reference_schedule"]["guidance"] = args.guidance
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = {}
        for role in ("reference", "student"):
            solver, steps = _role_solver(args, role)
            maps[role] = LabelledMap(load_map(getattr(args, role), adapter=getattr(args, f"{role}_type"),
                                              args=kv[f"{role}_arg"], schedule=kv[f"{role}_schedule"],
                                              kind=args.kind if role == "student" else "trajectory",
                                              solver=solver, steps=steps, shape=args.shape,
                                              device=args.device, label=f"--{role}",
                                              weights=getattr(args, f"{role}_weights"),
                                              allow_pickle=args.allow_pickle), f"--{role}")
        if args.out:  # a factory's module file is known once it is imported
            _refuse_out_onto_inputs(args)
        sa, sb = map_shape(maps["reference"]), map_shape(maps["student"])
        if sa is not None and sb is not None and sa != sb:
            raise ValueError(f"--reference and --student have different sample shapes: {sa} vs {sb}")
        for role, declared in (("reference", sa), ("student", sb)):
            if args.shape is not None and declared is not None and tuple(args.shape) != declared:
                raise ValueError(f"--shape {','.join(map(str, args.shape))} does not match the --{role} model's "
                                 f"sample shape {declared}; drop --shape (it is declared) or fix it")
        if sa is None and sb is None and args.shape is None:
            raise ValueError("--shape is required: neither model declares the shape of a sample (e.g. --shape 3,32,32)")
        se_mode = _solver_error_mode(args.solver_error) or args.rtol is not None
        if labels is not None and se_mode:
            if args.rtol is not None:
                raise ValueError("--rtol does not support conditional models (--labels) yet")
            warnings.warn("the solver-error estimate does not support conditional models yet; reported as not computed",
                          UserWarning, stacklevel=1)
            se_mode = False
        try:
            res = pfd.distance(maps["reference"], maps["student"], n=args.n, shape=args.shape, seed=args.seed,
                               batch_size=args.batch_size, progress=not args.no_progress, rtol=args.rtol,
                               solver_error=se_mode, labels=labels, by_label=args.by_label)
        except ValueError as exc:
            if "labels" in str(exc) or "conditional" in str(exc):
                raise ValueError(f"--labels: {exc}") from None
            raise
    notes: list[str] = []
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning)):
            continue
        text = f"{w.category.__name__}: {' '.join(str(w.message).split())}"
        if text not in notes:
            notes.append(text)
            print(f"pfd score: warning: {text}", file=sys.stderr)
    report = _score_report(args, res, kv)
    report = {**{k: v for k, v in report.items() if k != "timing"}, "warnings": notes, "timing": report["timing"]}
    if args.out:
        write_json(args.out, report)
    if args.json:
        print(json.dumps(to_jsonable(report), indent=2))
        return 0
    print(res)
    se = res.solver_error
    if se is not None:
        print(f"{se}" + ("" if se.value is None else f"; sampling stderr {res.stderr:.2g}: "
                                       + _dominant(res.stderr, se.value)))
    if "auto_solver" in res.provenance:
        au = res.provenance["auto_solver"]
        print(f"rtol {au['rtol']:g}: chose {au['chosen']['solver']}/{au['chosen']['steps']} "
              f"({'met' if au['met'] else 'NOT met'}, {len(au['attempts'])} attempt(s))")
    rows = [{"role": role, "spec": r["spec"], "type": r["type"], "NFE": report["nfe"][role],
             "solver": r["map"].get("solver", "-")} for role, r in (("reference", report["reference"]),
                                                                  ("student", report["student"]))]
    print(format_table(rows, ["role", "spec", "type", "NFE", "solver"]))
    if res.by_label is not None:
        print(format_table([{"label": c, "pfd": v["value"], "stderr": v["stderr"], "n": v["n"]}
                            for c, v in res.by_label.items()], ["label", "pfd", "stderr", "n"]))
    print(f"kind {args.kind}  seed {args.seed}  shape {report['settings']['shape']}  pfd {pfd.__version__}"
          + (f"  wrote {args.out}" if args.out else ""))
    return 0


def _untimed(auto: dict) -> dict:
    """The rtol= record without wall times (the score JSON keeps timings under "timing" only)."""
    out = {k: v for k, v in auto.items() if k != "seconds_total"}
    out["attempts"] = [{k: v for k, v in a.items() if k != "seconds"} for a in auto["attempts"]]
    return out


def _dominant(stderr: float, solver: float) -> str:
    """Which error to reduce first (see docs/solver-error.md)."""
    if solver > 2 * stderr:
        return "the solver error dominates: raise --steps (or use --rtol), not --n"
    if stderr > 2 * solver:
        return "the sampling error dominates: raise --n, not --steps"
    return "both errors are comparable"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    commands = {"demo": _cmd_demo, "grid": _cmd_grid, "mtog": _cmd_mtog, "dynamics": _cmd_dynamics,
                "bias-variance": _cmd_bias_variance, "score": _cmd_score}
    try:
        return commands[args.command](args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"pfd {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
