"""diffusers folders (``save_pretrained``) as noise-to-data maps, with nothing guessed and nothing downloaded.

A folder is either a *pipeline* folder (``model_index.json`` naming a denoising model component,
``unet`` or ``transformer``, and a ``scheduler``) or a *model* folder (``config.json`` of a diffusers
model) together with a scheduler folder (``scheduler_config.json``). The adapter is read from the
scheduler's class and config:

=====================================================  ================  ==========================================
scheduler                                              adapter           map
=====================================================  ================  ==========================================
``alphas_cumprod`` + ``prediction_type`` (DDPM, DDIM,  eps / v / x0      :class:`GridMap` on the schedule (start x_T = z)
PNDM, DPMSolverMultistep, Euler, UniPC, ...)
``FlowMatchEulerDiscreteScheduler``                    velocity          :class:`GridMap`, Karras grid, start x_t = z
``EDMEulerScheduler``, ``EDMDPMSolverMultistep...``    denoiser          :class:`pfd.DiffusionMap` (the scheduler's
                                                                         own EDM preconditioning)
``CMStochasticIterativeScheduler``                     consistency       :class:`ConsistencyStudent` (one step)
=====================================================  ================  ==========================================

The sample shape is read from the model config (``in_channels``, ``sample_size``). Only
unconditional pipelines are loaded (a pipeline with text encoders, a VAE, ... is rejected by name).
Sampler-only settings of the scheduler (``clip_sample``, ``thresholding``, ``timestep_spacing``,
``shift``, ...) are recorded in the provenance (``not_applied``) but not applied: pfd integrates the
model's probability-flow ODE. A consistency model's ``clip_denoised`` is applied: it is part of its
one-step output. Multi-step consistency sampling re-noises with fresh noise, so it is no map of z:
pfd scores the one-step map.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["DIFFUSERS_ADAPTERS", "DiffusersModel", "diffusers_map", "is_diffusers_folder", "load_diffusers"]

MODEL_COMPONENTS = ("unet", "transformer")
DIFFUSERS_ADAPTERS = ("eps", "v", "x0", "velocity", "denoiser", "consistency")
"""Adapter types a diffusers scheduler can determine."""
_PRED = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_EDM = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
_SAMPLER_ONLY = ("clip_sample", "clip_sample_range", "thresholding", "timestep_spacing", "steps_offset", "shift", "s_noise",
                 "use_karras_sigmas", "solver_order", "solver_type", "algorithm_type", "lower_order_final")


def is_diffusers_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding ``model_index.json`` (a pipeline) or a diffusers ``config.json``.

    >>> import tempfile
    >>> is_diffusers_folder(tempfile.mkdtemp())
    False
    """
    p = Path(path)
    if not p.is_dir():
        return False
    if (p / "model_index.json").is_file():
        return True
    cfg = _read_json(p / "config.json") if (p / "config.json").is_file() else None
    return isinstance(cfg, dict) and "_diffusers_version" in cfg


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not readable JSON ({type(exc).__name__}: {exc})") from None


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError:
        raise ImportError("loading a diffusers folder needs the diffusers package: pip install diffusers") from None
    return diffusers


def _class(diffusers: Any, name: str, what: str, folder: Path) -> Any:
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"{str(folder)!r}: {what} class {name!r} is not a class of the installed diffusers "
                         f"{diffusers.__version__}")
    return cls


class DiffusersModel:
    """A diffusers model and scheduler loaded from local folders, and what pfd reads from them.

    Attributes: ``model`` (the ``torch.nn.Module``, eval mode), ``scheduler``, ``adapter`` (one of
    :data:`DIFFUSERS_ADAPTERS`), ``shape`` (one sample), ``pipeline`` (class name or None),
    ``folder``, ``scheduler_folder``. :meth:`describe` is the provenance.
    """

    def __init__(self, model: torch.nn.Module, scheduler: Any, *, folder: Path, scheduler_folder: Path,
                 pipeline: str | None) -> None:
        self.model = model.eval()
        self.scheduler = scheduler
        self.folder = folder
        self.scheduler_folder = scheduler_folder
        self.pipeline = pipeline
        self.adapter = self._adapter()
        self.shape = self._shape()

    def _adapter(self) -> str:
        cls = type(self.scheduler).__name__
        cfg = self.scheduler.config
        if cls == "CMStochasticIterativeScheduler":
            return "consistency"
        if cls in _EDM:
            return "denoiser"
        if cls.startswith("FlowMatch"):
            return "velocity"
        pred = getattr(cfg, "prediction_type", None)
        if getattr(self.scheduler, "alphas_cumprod", None) is not None and pred in _PRED:
            return _PRED[pred]
        raise ValueError(f"{str(self.scheduler_folder)!r}: pfd cannot read the noise convention of scheduler {cls} "
                         f"(prediction_type {pred!r}); supported: schedulers with alphas_cumprod and prediction_type "
                         f"{sorted(_PRED)}, FlowMatch*, {', '.join(_EDM)}, CMStochasticIterativeScheduler")

    def _shape(self) -> tuple[int, ...]:
        cfg = self.model.config
        ch = getattr(cfg, "in_channels", None)
        size = getattr(cfg, "sample_size", None)
        if not isinstance(ch, int) or size is None:
            raise ValueError(f"{str(self.folder)!r}: the model config has no in_channels/sample_size; give the sample "
                             "shape explicitly")
        hw = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
        return (ch, *hw)

    def describe(self) -> dict[str, Any]:
        cfg = dict(self.scheduler.config)
        return {
            "format": "diffusers",
            "folder": str(self.folder),
            "pipeline": self.pipeline,
            "model": type(self.model).__name__,
            "scheduler": type(self.scheduler).__name__,
            "scheduler_folder": str(self.scheduler_folder),
            "adapter": self.adapter,
            "prediction_type": cfg.get("prediction_type"),
            "scheduler_config": {k: v for k, v in cfg.items() if not k.startswith("_")},
            "not_applied": sorted(k for k in _SAMPLER_ONLY if k in cfg),
            "shape": list(self.shape),
            "diffusers_version": _diffusers().__version__,
        }


def _load_model(diffusers: Any, folder: Path, device: torch.device) -> torch.nn.Module:
    cfg = _read_json(folder / "config.json")
    name = cfg.get("_class_name") if isinstance(cfg, dict) else None
    cls = _class(diffusers, name, "model", folder)
    try:
        model = cls.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise ValueError(f"{str(folder)!r}: diffusers could not load {name} ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]})") from None
    return model.to(device)


def _load_scheduler(diffusers: Any, folder: Path) -> Any:
    path = folder / "scheduler_config.json" if folder.is_dir() else folder
    if not path.is_file():
        raise ValueError(f"{str(folder)!r} is not a diffusers scheduler folder (no scheduler_config.json)")
    cfg = _read_json(path)
    name = cfg.get("_class_name") if isinstance(cfg, dict) else None
    cls = _class(diffusers, name, "scheduler", path)
    return cls.from_config(cfg)


def load_diffusers(folder: str | Path, *, scheduler: str | Path | None = None, device: Any = "cpu") -> DiffusersModel:
    """Load a diffusers pipeline folder, or a model folder plus a ``scheduler`` folder (local only).

    >>> load_diffusers("no/such/folder")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: 'no/such/folder' is not a folder ...
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is not a folder (a diffusers pipeline or model saved with save_pretrained)")
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    diffusers = _diffusers()
    index = root / "model_index.json"
    if index.is_file():
        comps = _read_json(index)
        if not isinstance(comps, dict):
            raise ValueError(f"{str(index)!r} is not a diffusers model_index.json")
        pipeline = comps.get("_class_name")
        parts = {k: v for k, v in comps.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None}
        models = [k for k in MODEL_COMPONENTS if k in parts]
        extra = sorted(set(parts) - {*MODEL_COMPONENTS, "scheduler"})
        if not models or extra:
            raise ValueError(f"{str(root)!r}: pfd loads unconditional pipelines made of a {' or '.join(MODEL_COMPONENTS)} "
                             f"and a scheduler; {pipeline} has components {sorted(parts)}")
        if scheduler is not None:
            raise ValueError(f"{str(root)!r} is a pipeline folder with its own scheduler; do not also pass scheduler=")
        model_dir, sched_dir = root / models[0], root / "scheduler"
    else:
        if not is_diffusers_folder(root):
            raise ValueError(f"{str(root)!r} is not a diffusers folder: it has neither model_index.json (a pipeline) "
                             "nor a diffusers config.json (a model)")
        if scheduler is None:
            hint = " (it looks like a pipeline's component: pass the pipeline folder above it)" \
                if (root.parent / "model_index.json").is_file() else ""
            raise ValueError(f"{str(root)!r} is a model folder: also name its scheduler folder, scheduler=PATH "
                             f"(--student-arg / --reference-arg scheduler=PATH){hint}")
        pipeline, model_dir, sched_dir = None, root, Path(scheduler)
    sched = _load_scheduler(diffusers, sched_dir)
    model = _load_model(diffusers, model_dir, dev)
    return DiffusersModel(model, sched, folder=root, scheduler_folder=sched_dir, pipeline=pipeline)


class _EDMPreconditioned(torch.nn.Module):
    """D(x, sigma) of a raw network with an EDM scheduler's own preconditioning."""

    def __init__(self, model: torch.nn.Module, scheduler: Any) -> None:
        super().__init__()
        self.model = model
        self.scheduler = scheduler
        self.name = f"diffusers:{type(model).__name__}(EDM)"
        self.trained_sigma_range = (float(scheduler.config.sigma_min), float(scheduler.config.sigma_max))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        from pfd.adapters.diffusion import _unwrap

        sb = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        out = _unwrap(self.model(self.scheduler.precondition_inputs(x, sb), self.scheduler.precondition_noise(sigma)),
                      "EDM model")
        return self.scheduler.precondition_outputs(x, out, sb)


class _CMDenoiser(torch.nn.Module):
    """The consistency function f(x, sigma) of diffusers' CMStochasticIterativeScheduler:
    c_skip x + c_out F(x / sqrt(sigma^2 + sigma_data^2), 250 log sigma), boundary at sigma_min,
    clipped to [-1, 1] when the scheduler's ``clip_denoised`` says so (its one-step output)."""

    def __init__(self, model: torch.nn.Module, sigma_min: float, sigma_data: float, clip: bool) -> None:
        super().__init__()
        self.model = model
        self.sigma_min = sigma_min
        self.sigma_data = sigma_data
        self.clip = clip

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        from pfd.adapters.diffusion import _unwrap

        s64 = sigma.to(torch.float64)
        t = 1000 * 0.25 * torch.log(s64 + 1e-44)
        sb = s64.reshape(-1, *([1] * (x.ndim - 1)))
        sd2 = self.sigma_data**2
        c_in = 1.0 / torch.sqrt(sb * sb + sd2)
        c_skip = sd2 / ((sb - self.sigma_min) ** 2 + sd2)
        c_out = (sb - self.sigma_min) * self.sigma_data / torch.sqrt(sb * sb + sd2)
        out = _unwrap(self.model((c_in * x.to(torch.float64)).to(x.dtype), t.to(x.dtype)), "consistency model")
        d = c_skip * x.to(torch.float64) + c_out * out.to(torch.float64)
        return (d.clamp(-1.0, 1.0) if self.clip else d).to(x.dtype)


def diffusers_map(
    dm: DiffusersModel,
    *,
    solver: str = "heun",
    steps: int = 18,
    grid: str | None = None,
    start: str | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    timesteps: str = "continuous",
    kind: str = "trajectory",
    shape: Sequence[int] | None = None,
    name: str | None = None,
) -> Any:
    """The noise-to-data map of a loaded diffusers model (see the module docstring for which map).

    ``grid`` of a VP model: ``"schedule"`` (default, the DDIM-style timestep grid inside the
    schedule), ``"karras"`` or ``"loglinear"``; ``start`` ``"vp"`` (default, x_T = z), ``"ve"``.
    ``solver``/``steps``/``grid`` do not apply to a consistency model (one step from sigma_max).
    """
    from pfd.adapters.diffusion import FlowMatchingDenoiser, GridMap, VPDenoiser
    from pfd.adapters.students import ConsistencyStudent
    from pfd.maps import DiffusionMap
    from pfd.schedules import karras_sigmas

    shp = tuple(shape) if shape is not None else dm.shape
    if tuple(shp) != dm.shape:
        raise ValueError(f"shape {tuple(shp)} does not match the model config's sample shape {dm.shape}")
    label = name or str(dm.folder)
    cfg = dm.scheduler.config
    if dm.adapter in _PRED.values():
        pred = cfg.prediction_type
        den = VPDenoiser(dm.model, dm.scheduler.alphas_cumprod, pred, timesteps=timesteps,
                         name=f"diffusers:{type(dm.model).__name__}({pred})")
        rng = {k: v for k, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max)) if v is not None}
        out: Any = den.ode_map(solver=solver, steps=steps, grid=grid or "schedule", start=start or "vp", shape=shp,
                                name=label, **rng)
    elif dm.adapter == "velocity":
        den = FlowMatchingDenoiser(dm.model, t_scale=float(cfg.num_train_timesteps),
                                   name=f"diffusers:{type(dm.model).__name__}(flow matching)")
        lo, hi = sigma_min or 0.002, sigma_max or 80.0
        if grid not in (None, "karras"):
            raise ValueError(f"a flow-matching model's grid is 'karras' (over [sigma_min, sigma_max]), got {grid!r}")
        out = GridMap(den, karras_sigmas(steps, lo, hi), solver=solver, start=start or "fm", shape=shp, name=label)
    elif dm.adapter == "denoiser":
        den = _EDMPreconditioned(dm.model, dm.scheduler)
        out = DiffusionMap(den, sigma_max=sigma_max or float(cfg.sigma_max), sigma_min=sigma_min or float(cfg.sigma_min),
                           solver=solver, steps=steps, grid=grid or "karras", shape=shp, name=label)
    else:
        if grid is not None or start is not None or sigma_min is not None:
            raise ValueError("a consistency model is used in one step from sigma_max: grid, start and sigma_min do not "
                             "apply")
        f = _CMDenoiser(dm.model, float(cfg.sigma_min), float(cfg.sigma_data), bool(cfg.clip_denoised))
        out = ConsistencyStudent(f, sigma_max=sigma_max or float(cfg.sigma_max), kind=kind, shape=shp, name=label)
    out.source = dm.describe()
    return out


def check_loader_args(args: Mapping[str, Any], label: str) -> dict[str, Any]:
    """The keyword arguments a diffusers folder SPEC takes: ``scheduler`` (a folder), ``timesteps``."""
    allowed = {"scheduler", "timesteps"}
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise ValueError(f"{label}: a diffusers folder takes only the arguments {sorted(allowed)}, got {unknown}")
    return dict(args)
