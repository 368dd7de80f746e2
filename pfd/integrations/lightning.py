"""A PyTorch Lightning callback that tracks the PFD of the module being trained.

Built on :class:`pfd.PFDMonitor`: the reference map is integrated once on the noise bank and
each evaluation runs only the student. Evaluates at the end of every validation epoch (or every
``every_n_steps`` optimizer steps), skips Lightning's sanity check, logs ``<prefix>/value``,
``<prefix>/stderr``, ``<prefix>/ci_low``, ``<prefix>/ci_high`` and ``<prefix>/nfe`` through
``pl_module.log``, and stores the monitor's history in checkpoints, so a resumed run continues
the same curve. Under DDP every rank evaluates its shard of the noise (all ranks end with the
same value, so no further sync is needed) and only rank 0 writes the JSONL log; Lightning's
loggers write on rank 0.

The student map is ``student(pl_module)`` if ``student`` is given, else ``pl_module.pfd_map()``
if the module defines it, else the module itself used as a one-step generator ``x = G(z)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - the standalone package
    from pytorch_lightning.callbacks import Callback

from pfd._checks import is_int
from pfd.monitor import PFDMonitor

__all__ = ["PFDCallback"]


class PFDCallback(Callback):
    """Evaluate and log the PFD of a LightningModule during training.

    Parameters
    ----------
    monitor:
        A :class:`pfd.PFDMonitor`; or pass ``reference=`` and the monitor's keyword arguments.
    student:
        ``student(pl_module) -> map``; see the module docstring for the default.
    every_n_steps:
        Evaluate after every ``every_n_steps`` optimizer steps instead of at validation-epoch end.
    prefix:
        Prefix of the logged keys (default ``"pfd"``).

    Example
    -------
    >>> import pfd
    >>> from pfd.integrations.lightning import PFDCallback
    >>> teacher = pfd.GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    >>> cb = PFDCallback(reference=teacher.ode_map(), n=256, seed=0)
    >>> cb.monitor.n, cb.state_key
    (256, 'PFDCallback[pfd]')
    """

    def __init__(
        self,
        monitor: PFDMonitor | None = None,
        *,
        reference: Callable[..., Any] | None = None,
        student: Callable[[Any], Any] | None = None,
        every_n_steps: int | None = None,
        prefix: str = "pfd",
        **monitor_kwargs: Any,
    ) -> None:
        super().__init__()
        if monitor is None:
            if reference is None:
                raise TypeError("PFDCallback needs monitor= (a pfd.PFDMonitor) or reference= (a reference map)")
            monitor = PFDMonitor(reference, **monitor_kwargs)
        elif reference is not None or monitor_kwargs:
            raise TypeError("pass either monitor= or reference= with monitor keyword arguments, not both")
        if not isinstance(monitor, PFDMonitor):
            raise TypeError(f"monitor must be a pfd.PFDMonitor, got {type(monitor).__name__}")
        if student is not None and not callable(student):
            raise TypeError(f"student must be callable student(pl_module) -> map, got {type(student).__name__}")
        if every_n_steps is not None and (not is_int(every_n_steps) or every_n_steps < 1):
            raise ValueError(f"every_n_steps must be None or an int >= 1, got {every_n_steps!r}")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty str, got {prefix!r}")
        self.monitor = monitor
        self.student = student
        self.every_n_steps = every_n_steps
        self.prefix = prefix

    @property
    def state_key(self) -> str:
        return f"{type(self).__name__}[{self.prefix}]"

    def _student_map(self, pl_module: Any) -> Any:
        if self.student is not None:
            return self.student(pl_module)
        make = getattr(pl_module, "pfd_map", None)
        return make() if callable(make) else pl_module

    def _evaluate(self, trainer: Any, pl_module: Any, on_step: bool) -> dict[str, Any] | None:
        step = int(trainer.global_step)
        if any(h["step"] == step for h in self.monitor.history):
            return None  # e.g. several validation runs at the same step
        rec = self.monitor.evaluate(self._student_map(pl_module), step)
        values = {"value": rec["pfd"], "stderr": rec["stderr"], "ci_low": rec["ci95"][0], "ci_high": rec["ci95"][1]}
        if rec["nfe"] is not None:
            values["nfe"] = rec["nfe"]
        for key, val in values.items():
            # identical on every rank (pfd.distance merges all shards), so no sync_dist needed
            pl_module.log(f"{self.prefix}/{key}", float(val), on_step=on_step, on_epoch=not on_step,
                          prog_bar=key == "value", sync_dist=False, rank_zero_only=False)
        return rec

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or self.every_n_steps is not None:
            return
        self._evaluate(trainer, pl_module, on_step=False)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every_n_steps is None or trainer.global_step % self.every_n_steps != 0:
            return
        self._evaluate(trainer, pl_module, on_step=True)

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state_dict)
