"""Training dynamics of a DSM student: E_gen, E_mem, train and held-out loss per epoch.

Every evaluation uses the same canonical noise (one seed), the teacher's and the empirical
model's maps are cached, so epoch-to-epoch changes are the student's alone. The curve of E_gen
is then scanned for

* an early-learning minimum: the best E_gen is reached before the end and E_gen rises after it
  by more than the noise tolerance (the student drifts towards memorization);
* epoch-wise double descent: a descent, a rise to a local maximum, and a second descent below
  that maximum, each larger than the tolerance.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from pfd._checks import check_positive_int
from pfd._train import atomic_torch_save
from pfd.analysis._runkey import check_settings, load_checkpoint, run_settings, settings_key
from pfd.analysis._runs import train_set
from pfd.analysis.generalization import generalization_errors, reference_maps
from pfd.analysis.students import DSMTrainer, TrainConfig
from pfd.analytic.gmm import GaussianMixture
from pfd.noise import derive_seed
from pfd.report import check_writable

__all__ = ["detect_features", "jitter", "training_dynamics"]


def jitter(values: Any) -> float:
    """Robust scale of the epoch-to-epoch noise of a curve: MAD of its first differences / sqrt 2
    (a smooth trend contributes little; independent noise of sd s gives ~s).

    >>> round(jitter([0.0, 1.0, 0.0, 1.0, 0.0]), 4)
    1.0484
    """
    y = np.asarray(values, float)
    if y.size < 3:
        return 0.0
    d = np.diff(y)
    return float(np.median(np.abs(d - np.median(d))) / 0.6744897501960817 / np.sqrt(2.0))


def detect_features(epochs: Any, values: Any, tol: float = 0.0) -> dict[str, Any]:
    """Early-learning minimum and double-descent episodes of a curve ``values(epochs)``.

    ``tol`` is the smallest change that counts (e.g. twice the estimate's standard error).
    Returns the global minimum (epoch, value, ``rise_after`` = final - min, ``early`` = whether
    it is an early-learning minimum), the local minima and maxima whose prominence exceeds
    ``tol``, and the double-descent episodes (first minimum, peak, second minimum, depths).

    >>> f = detect_features([1, 2, 3, 4, 5, 6, 7], [5.0, 3.0, 4.0, 4.5, 3.5, 2.0, 2.2], tol=0.1)
    >>> f["minimum"]["epoch"], f["minimum"]["early"]
    (6, True)
    >>> [(d["first_min_epoch"], d["peak_epoch"], d["second_min_epoch"]) for d in f["double_descent"]]
    [(2, 4, 6)]
    """
    from scipy.signal import find_peaks

    e, y = np.asarray(epochs, float), np.asarray(values, float)
    if e.shape != y.shape or e.ndim != 1 or e.size < 1:
        raise ValueError("epochs and values must be 1-D sequences of equal, non-zero length")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    i = int(np.argmin(y))
    rise = float(y[-1] - y[i])
    minimum = {"epoch": float(e[i]) if not e[i].is_integer() else int(e[i]), "value": float(y[i]), "index": i,
               "rise_after": rise, "max_after": float(y[i:].max()), "early": bool(i < y.size - 1 and rise > tol)}
    prom = max(tol, 1e-15)
    # pad with +inf / -inf edges so endpoints can be extrema
    mins, _ = find_peaks(np.r_[-np.inf, -y, -np.inf], prominence=prom)
    maxs, _ = find_peaks(np.r_[-np.inf, y, -np.inf], prominence=prom)
    mins, maxs = mins - 1, maxs - 1

    def ep(j: int) -> Any:
        return int(e[j]) if e[j].is_integer() else float(e[j])

    dd = []
    for p in maxs:
        before = [m for m in mins if m < p]
        after = [m for m in mins if m > p]
        if not before or not after:
            continue
        m1 = before[-1]
        m2 = min(after, key=lambda m: y[m])
        if y[p] - y[m1] > tol and y[p] - y[m2] > tol:
            dd.append({"first_min_epoch": ep(m1), "peak_epoch": ep(p), "second_min_epoch": ep(m2),
                       "first_min": float(y[m1]), "peak": float(y[p]), "second_min": float(y[m2]),
                       "rise": float(y[p] - y[m1]), "second_descent": float(y[p] - y[m2])})
    return {"minimum": minimum, "local_minima": [ep(m) for m in mins], "local_maxima": [ep(m) for m in maxs],
            "double_descent": dd, "tol": tol}


def training_dynamics(
    teacher: GaussianMixture,
    n_train: int,
    *,
    epochs: int = 100,
    eval_every: int = 1,
    seed: int = 0,
    n_heldout: int = 1024,
    checkpoint: str | os.PathLike[str] | None = None,
    config: TrainConfig | None = None,
) -> dict[str, Any]:
    """Train a DSM student on N teacher samples, scoring it every ``eval_every`` epochs.

    ``config`` (:class:`pfd.analysis.TrainConfig`) sets the network, optimiser and evaluation;
    training runs for ``epochs`` epochs (``config.train_steps`` is not used here).

    Each evaluation row holds epoch, step, E_gen and E_mem (with CIs, same noise every time), the
    DSM loss on the training set and on ``n_heldout`` fresh teacher samples (fixed noise draws).
    With ``checkpoint`` the trainer state and rows are saved atomically after every evaluation,
    with the settings that determine them (everything but ``epochs``, plus the pfd and torch
    versions); a rerun resumes from it only with the same settings (and ``epochs`` at least the
    checkpoint's epoch), and otherwise refuses with a message naming the differing settings, so
    a resumed curve never mixes two settings. A truncated checkpoint is reported by its path.
    The result adds :func:`detect_features` of E_gen with tolerance
    max(2 x the largest E_gen standard error, 2 x :func:`jitter` of the curve), so neither the
    PFD estimate's noise nor SGD's epoch-to-epoch noise counts as a feature.
    """
    if not isinstance(teacher, GaussianMixture):
        raise TypeError(f"teacher must be a pfd.GaussianMixture, got {type(teacher).__name__}")
    check_positive_int(n_train, "n_train", minimum=2)
    check_positive_int(epochs, "epochs")
    check_positive_int(eval_every, "eval_every")
    cfg = config or TrainConfig()
    solver = cfg.solver.kwargs()
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None:
        check_writable(ckpt, "checkpoint")
    settings = run_settings(teacher=teacher.to_dict(), n_train=n_train, eval_every=eval_every, seed=seed,
                            n_heldout=n_heldout, **{k: v for k, v in cfg.to_dict().items() if k != "train_steps"})
    data = train_set(teacher, n_train, seed)
    heldout = teacher.sample(n_heldout, seed=derive_seed(seed, 41) % (2**62))
    tr = DSMTrainer(data, width=cfg.width, depth=cfg.depth, seed=seed, lr=cfg.lr, batch_size=cfg.batch_size)
    refs = reference_maps(teacher, data, **solver)
    rows: list[dict[str, Any]] = []
    if ckpt is not None and ckpt.exists():
        state = load_checkpoint(ckpt, "checkpoint")
        hint = "use another checkpoint (--out-dir) or delete it to start over"
        check_settings(state.get("settings"), settings, f"checkpoint {str(ckpt)!r}", hint)
        if int(state["trainer"]["epoch"]) > epochs:
            raise ValueError(f"checkpoint {str(ckpt)!r} is at epoch {state['trainer']['epoch']}, beyond epochs={epochs}; "
                             f"ask for epochs >= {state['trainer']['epoch']} or {hint}")
        tr.load_state_dict(state["trainer"])
        rows = state["rows"]
    t0 = time.perf_counter()

    def evaluate(trainer: DSMTrainer, epoch_loss: float | None) -> None:
        if trainer.epoch % eval_every and trainer.epoch != epochs:
            return
        err = generalization_errors(trainer.ode_map(**solver), None, None, n=cfg.n_eval, seed=cfg.eval_seed,
                                    references=refs)
        rows.append({"epoch": trainer.epoch, "step": trainer.step, **err.to_dict(), "epoch_loss": epoch_loss,
                     "train_loss": trainer.fixed_loss(data, seed=seed), "heldout_loss": trainer.fixed_loss(heldout, seed=seed)})
        if ckpt is not None:
            atomic_torch_save({"trainer": trainer.state_dict(), "rows": rows, "settings": settings}, ckpt)

    if not rows:
        evaluate(tr, None)  # epoch 0: the untrained network
    from tqdm.auto import tqdm

    with tqdm(total=epochs, initial=tr.epoch, desc="dynamics", unit="epoch", disable=not cfg.progress, leave=False) as bar:
        while tr.epoch < epochs:
            tr.train(1, callback=evaluate)
            bar.update(1)
    eg = np.array([r["e_gen"] for r in rows])
    tol = max(2.0 * max(r["e_gen_stderr"] for r in rows), 2.0 * jitter(eg))
    emp = generalization_errors(refs.empirical, None, None, n=cfg.n_eval, seed=cfg.eval_seed, references=refs).e_gen.value
    return {
        "config": {"n_train": n_train, **{k: v for k, v in cfg.to_dict().items() if k != "train_steps"},
                   "n_params": tr.n_params, "epochs": epochs,
                   "eval_every": eval_every, "seed": seed, "n_heldout": n_heldout, "teacher": teacher.to_dict(),
                   "settings_key": settings_key(settings), "versions": settings["versions"]},
        "rows": rows,
        "e_gen_empirical": emp,
        "features": detect_features([r["epoch"] for r in rows], eg, tol),
        "seconds": time.perf_counter() - t0,
    }
