"""Models stored on disk as noise-to-data maps: the SPEC strings of ``pfd score``.

A SPEC names a model the way users keep them:

* ``module:function`` -- a Python factory, imported and called with keyword arguments
  (``module`` is a dotted module on ``sys.path`` or a path to a ``.py`` file);
* ``path/to/model.pt`` (``.ts``, ``.pth``, ``.pkl``, ``.ckpt``) -- a TorchScript file
  (``torch.jit.load``), or a ``torch.save`` file of a whole module: that is a pickle, and loading
  a pickle runs code stored in it, so it is loaded only with ``allow_pickle=True``
  (``--allow-pickle``); a ``state_dict`` file is not a model: pass it as ``weights`` on top of a
  factory SPEC (``--student-weights FILE``; torch ``weights_only`` load or ``.safetensors``);
* ``path/to/folder`` -- a diffusers folder (``save_pretrained``): a pipeline (``model_index.json``)
  or a model folder with ``args={"scheduler": "path/to/scheduler"}``; the adapter type, sample
  shape and schedule are read from its configs (:mod:`pfd.adapters.pipelines`);
* ``gmm:path/to/mixture.json`` -- an analytic :class:`pfd.GaussianMixture`
  (``{"weights", "means", "covs"}`` or ``{"points"}``, see :meth:`pfd.GaussianMixture.to_dict`).

The loaded object is wrapped by the adapter named by ``adapter`` (the existing classes of
:mod:`pfd.adapters`; nothing is guessed; a diffusers folder's scheduler names it) and returned as
a map ``z -> x``:

============  =========================================================  ======================
adapter       the model is called as                                     map
============  =========================================================  ======================
denoiser      ``D(x, sigma) -> x0`` (EDM)                                :class:`pfd.DiffusionMap`
eps, v, x0    ``model(x_vp, t)`` on a DDPM alpha-bar schedule            :class:`pfd.adapters.GridMap`
velocity      ``v(x_t, t)`` flow matching                                :class:`pfd.DiffusionMap`
score         ``s(x_t, t)`` of a VE / VP / OU process                    :class:`pfd.DiffusionMap`
one-step      ``G(z) -> x``                                              :class:`pfd.adapters.GeneratorStudent`
flow-map      ``G(x, t, s)`` composed over a grid                        :class:`pfd.adapters.FlowMapStudent`
consistency   ``f(x, sigma) -> x0`` in one step from sigma_max           :class:`pfd.adapters.ConsistencyStudent`
============  =========================================================  ======================
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pfd._checks import NonFiniteError, check_positive_int, check_shape
from pfd.maps import describe_map, is_conditional, map_shape

__all__ = ["ADAPTERS", "TORCHSCRIPT_SUFFIXES", "LabelledMap", "load_map", "load_object", "load_weights",
           "parse_assignments", "resolve_device"]

ADAPTERS = ("denoiser", "eps", "v", "x0", "velocity", "score", "one-step", "flow-map", "consistency")
"""Adapter types a SPEC can be wrapped in."""

TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".pth", ".pkl", ".ckpt")
"""File SPECs: TorchScript archives, or ``torch.save`` pickles (loaded only with ``allow_pickle``)."""

_VP_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
_RANGE = ("sigma_max", "sigma_min")
SCHEDULE_KEYS: dict[str, tuple[str, ...]] = {
    "denoiser": _RANGE,
    "eps": ("beta_schedule", "beta_start", "beta_end", "train_steps", "timesteps", "start", *_RANGE),
    "velocity": ("time", "t_scale", *_RANGE),
    "score": ("process", "beta_min", "beta_max", *_RANGE),
    "one-step": (),
    "flow-map": ("grid", "signature", "start_scale"),
    "consistency": ("sigma_max",),
}
SCHEDULE_KEYS["eps"] = (*SCHEDULE_KEYS["eps"], "grid")
_COND = ("condition", "guidance", "null_condition")
for _k in ("denoiser", "eps", "velocity", "score"):
    SCHEDULE_KEYS[_k] = (*SCHEDULE_KEYS[_k], *_COND)
for _k in ("one-step", "flow-map", "consistency"):
    SCHEDULE_KEYS[_k] = (*SCHEDULE_KEYS[_k], "conditional")
SCHEDULE_KEYS["v"] = SCHEDULE_KEYS["x0"] = SCHEDULE_KEYS["eps"]
FOLDER_SCHEDULE_KEYS = ("grid", "start", *_RANGE)
"""Schedule keys of a diffusers folder SPEC (the schedule itself is read from the folder)."""
# the DDPM schedule (Ho et al. 2020), used when a VP model's schedule is not given
DDPM_SCHEDULE = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "train_steps": 1000}


def parse_assignments(items: Sequence[str] | None, option: str) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` (repeatable command-line options) into a dict.

    Values are parsed as JSON when possible (numbers, booleans, lists, ``null``), else kept
    as strings.

    >>> parse_assignments(["width=16", "name=tiny", "grid=[80, 1, 0]", "ema=true"], "--student-arg")
    {'width': 16, 'name': 'tiny', 'grid': [80, 1, 0], 'ema': True}
    """
    out: dict[str, Any] = {}
    for item in items or ():
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"{option} must be KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key.isidentifier():
            raise ValueError(f"{option}: {key!r} is not a valid keyword name (in {item!r})")
        if key in out:
            raise ValueError(f"{option}: {key!r} given twice")
        try:
            out[key] = json.loads(text)
        except ValueError as exc:
            if text.strip()[:1] in ("[", "{", '"'):  # meant as JSON (a list, a dict, a quoted string), but broken
                raise ValueError(f"{option} {item}: the value is not valid JSON ({exc}); write lists as [80, 1, 0]") from None
            out[key] = text
    return out


def input_files(spec: str) -> list[Path]:
    """The files a (loaded) SPEC reads: the mixture JSON, the TorchScript file, or the factory's
    ``.py`` file (a dotted module's ``__file__`` once imported). Used to refuse an output path that
    would overwrite an input.

    >>> [p.name for p in input_files("gmm:teacher.json")]
    ['teacher.json']
    """
    spec = spec.strip()
    if spec.startswith("gmm:"):
        return [Path(spec[4:])]
    if spec.endswith(TORCHSCRIPT_SUFFIXES):
        return [Path(spec)]
    if ":" not in spec:
        return []
    module = spec.rsplit(":", 1)[0]
    if module.endswith(".py"):
        return [Path(module)]
    mod = sys.modules.get(module)
    origin = getattr(mod, "__file__", None)
    return [Path(origin)] if origin else []


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True if two paths name the same existing file (hard and symbolic links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def resolve_device(device: Any, name: str = "device") -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a torch.device; a clear error when CUDA is absent.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"{name} must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}") from None
    else:
        raise TypeError(f"{name} must be a str such as 'cpu' or 'cuda', got {type(device).__name__}")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = torch.version.cuda
            why = ("this torch build has no CUDA support" if built is None
                   else f"no CUDA GPU is visible (torch built for CUDA {built})")
            raise ValueError(f"{name} {device!r} requested but CUDA is not available: {why}; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _import_module(module: str, label: str) -> Any:
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise ValueError(f"{label}: no such Python file {module!r}")
        modname = "pfd_spec_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(modname, path)
        if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a loader
            raise ValueError(f"{label}: cannot import {module!r}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as exc:
            sys.modules.pop(modname, None)
            raise ValueError(f"{label}: importing {module!r} raised {_one_line(exc)}") from None
        return mod
    if not all(part.isidentifier() for part in module.split(".")):
        raise ValueError(f"{label}: {module!r} is neither a dotted module name nor a path to a .py file")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"{label}: cannot import module {module!r} ({_one_line(exc)}); "
                         "is its folder on PYTHONPATH?") from None
    except Exception as exc:
        raise ValueError(f"{label}: importing module {module!r} raised {_one_line(exc)}") from None


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def _pickles_objects(exc: BaseException) -> bool:
    """Whether a weights-only torch.load failed because the file pickles Python objects (classes,
    functions: a whole model), rather than because it is not a torch file at all."""
    text = str(exc)
    return "Weights only load failed" in text and ("GLOBAL" in text or "global" in text.split("WeightsUnpickler")[-1])


PICKLE_MESSAGE = ("{label}: {path!r} is a pickled Python object (torch.save of a whole model): loading a pickle runs "
                  "code stored in the file, so pfd does not load it by default. If you trust the file, pass "
                  "--allow-pickle (Python: allow_pickle=True); or save a TorchScript file (torch.jit.save) or a "
                  "state_dict (pass it with --student-weights / --reference-weights on top of a factory SPEC)")


def _load_model_file(path: Path, dev: torch.device, allow_pickle: bool, label: str) -> Any:
    spec = str(path)
    if not path.is_file():
        raise ValueError(f"{label}: no such model file {spec!r}")
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript deprecated; loading still works
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(spec, map_location=dev)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{label}: {spec!r} is not a loadable TorchScript file "
                             f"(save it with torch.jit.save; torch said: {first})") from None
    try:
        obj = torch.load(spec, map_location=dev, weights_only=True)
    except Exception as exc:
        if not _pickles_objects(exc):
            raise ValueError(f"{label}: {spec!r} is not a loadable TorchScript file (torch.jit.save) nor a torch.save "
                             "file") from None
        obj = None
    if obj is not None:
        what = "a state_dict" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise ValueError(f"{label}: {spec!r} holds {what} (weights only, no model code): build the model with a "
                         "factory SPEC and pass this file as its weights (--student-weights / --reference-weights FILE)")
    if not allow_pickle:
        raise ValueError(PICKLE_MESSAGE.format(label=label, path=spec))
    try:
        model = torch.load(spec, map_location=dev, weights_only=False)
    except ModuleNotFoundError as exc:
        raise ValueError(f"{label}: the pickle {spec!r} refers to module {exc.name!r}, which cannot be imported; put "
                         "the folder of the code that defined the model on PYTHONPATH") from None
    except Exception as exc:
        raise ValueError(f"{label}: unpickling {spec!r} raised {_one_line(exc)}") from None
    if not callable(model):
        raise TypeError(f"{label}: {spec!r} unpickled to a {type(model).__name__}, not a callable model")
    if isinstance(model, torch.nn.Module):
        model.to(dev)
    return model


def load_weights(model: Any, path: str | Path, *, label: str = "spec") -> None:
    """Load a ``state_dict`` file into a ``torch.nn.Module`` (strict: every key must match).

    ``*.safetensors`` files are read with safetensors; others with ``torch.load(weights_only=True)``
    (a mapping of tensors, or a checkpoint dict holding one under ``state_dict``).

    >>> import os, tempfile, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
    >>> torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    >>> net = torch.nn.Linear(2, 2)
    >>> load_weights(net, path)
    >>> load_weights(torch.nn.Linear(2, 3), path, label="--student-weights")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --student-weights: ... do not fit the model: size mismatch for weight: copying a param ...
    """
    p = Path(path)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{label}: weights can be loaded into a torch.nn.Module only, the SPEC gave a "
                        f"{type(model).__name__}")
    if not p.is_file():
        raise ValueError(f"{label}: no such weights file {str(p)!r}")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(f"{label}: reading {str(p)!r} needs the safetensors package") from None
        try:
            sd: Any = load_file(str(p), device="cpu")
        except Exception as exc:
            raise ValueError(f"{label}: {str(p)!r} is not a safetensors file ({_one_line(exc)})") from None
    else:
        try:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:
            if _pickles_objects(exc):
                raise ValueError(f"{label}: {str(p)!r} is not a weights-only file (it pickles Python objects); save "
                                 "model.state_dict() instead") from None
            raise ValueError(f"{label}: {str(p)!r} is not a torch.save file ({type(exc).__name__})") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        keys = sorted(map(str, sd))[:8] if isinstance(sd, Mapping) else []
        raise ValueError(f"{label}: {str(p)!r} is not a state_dict (a mapping of names to tensors); top-level keys: "
                         f"{keys}")
    try:
        res = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
        raise ValueError(f"{label}: the weights in {str(p)!r} do not fit the model: {'; '.join(lines[:3])}") from None
    if res.missing_keys or res.unexpected_keys:
        raise ValueError(f"{label}: the weights in {str(p)!r} do not fit the model: missing keys "
                         f"{res.missing_keys[:6]}, unexpected keys {res.unexpected_keys[:6]}")


def load_object(spec: str, *, args: Mapping[str, Any] | None = None, device: Any = "cpu", label: str = "spec",
                allow_pickle: bool = False) -> Any:
    """The model a SPEC names: the factory's return value, a TorchScript module, an unpickled
    module (``allow_pickle`` only), or a :class:`pfd.GaussianMixture`. Torch modules are moved to
    ``device``. (A diffusers folder is loaded by :func:`load_map`.)

    Every failure is a ValueError / TypeError starting with ``label``.
    """
    if not isinstance(spec, str):
        raise TypeError(f"{label} must be a SPEC string, got {type(spec).__name__}")
    spec = spec.strip()
    if not spec:
        raise ValueError(f"{label} must be a non-empty SPEC")
    if args is not None and not isinstance(args, Mapping):
        raise TypeError(f"{label}: args must be a mapping of keyword arguments, got {type(args).__name__}")
    args = dict(args or {})
    dev = resolve_device(device, name=f"{label}: device")
    if spec.startswith("gmm:"):
        from pfd.analytic.gmm import GaussianMixture

        path = Path(spec[4:])
        if args:
            raise ValueError(f"{label}: a gmm:<file> SPEC takes no factory arguments, got {sorted(args)}")
        if not path.is_file():
            raise ValueError(f"{label}: no such mixture file {str(path)!r}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{label}: {str(path)!r} is not valid JSON ({_one_line(exc)})") from None
        try:
            return GaussianMixture.from_dict(data)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{label}: {str(path)!r} is not a valid mixture: {exc}") from None
    if Path(spec).is_dir():
        raise ValueError(f"{label}: {spec!r} is a folder; a diffusers folder is loaded by load_map")
    if spec.endswith(".safetensors"):
        raise ValueError(f"{label}: {spec!r} holds weights only (no model code): build the model with a factory SPEC "
                         "and pass this file as its weights (--student-weights / --reference-weights FILE)")
    if spec.endswith(TORCHSCRIPT_SUFFIXES):
        if args:
            raise ValueError(f"{label}: a model file SPEC takes no factory arguments, got {sorted(args)}")
        return _load_model_file(Path(spec), dev, allow_pickle, label)
    if ":" not in spec:
        raise ValueError(f"{label}: {spec!r} is not a SPEC; expected module:function, path/to/file.py:function, "
                         f"a model file ({', '.join('*' + s for s in TORCHSCRIPT_SUFFIXES)}), a diffusers folder "
                         "or gmm:<file.json>")
    module, attr = spec.rsplit(":", 1)
    if not module or not attr:
        raise ValueError(f"{label}: {spec!r} must be module:function with both parts non-empty")
    obj: Any = _import_module(module, label)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{label}: {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{label}: {spec} is not callable (a factory function returning the model is expected)")
    try:
        model = obj(**args)
    except Exception as exc:
        floats = [f"{k}={v!r} (a float; write {k}={int(v)} if an int is meant)" for k, v in sorted(args.items())
                  if isinstance(v, float) and v.is_integer()]
        hint = f"; note the argument types: {', '.join(floats)}" if floats and isinstance(exc, TypeError) else ""
        raise ValueError(f"{label}: the factory {spec}({', '.join(sorted(args))}) raised {_one_line(exc)}{hint}") from None
    if model is None or not callable(model):
        raise TypeError(f"{label}: the factory {spec} must return a callable model, got {type(model).__name__}")
    if isinstance(model, torch.nn.Module):
        model.to(dev)
    return model


def _vp_alphas_cumprod(sched: dict[str, Any], label: str) -> torch.Tensor:
    kind = sched.get("beta_schedule", DDPM_SCHEDULE["beta_schedule"])
    t = check_positive_int(sched.get("train_steps", DDPM_SCHEDULE["train_steps"]), f"{label}: train_steps", minimum=2)
    b0 = float(sched.get("beta_start", DDPM_SCHEDULE["beta_start"]))
    b1 = float(sched.get("beta_end", DDPM_SCHEDULE["beta_end"]))
    if not 0 < b0 < 1 or not 0 < b1 < 1:
        raise ValueError(f"{label}: beta_start and beta_end must lie in (0, 1), got {b0}, {b1}")
    if kind == "linear":
        betas = torch.linspace(b0, b1, t, dtype=torch.float64)
    elif kind == "scaled_linear":  # Stable Diffusion: linear in sqrt(beta)
        betas = torch.linspace(b0**0.5, b1**0.5, t, dtype=torch.float64) ** 2
    else:
        raise ValueError(f"{label}: beta_schedule must be 'linear' or 'scaled_linear', got {kind!r}")
    return torch.cumprod(1.0 - betas, 0)


def load_map(
    spec: str,
    *,
    adapter: str | None = None,
    args: Mapping[str, Any] | None = None,
    schedule: Mapping[str, Any] | None = None,
    kind: str = "trajectory",
    solver: str = "heun",
    steps: int | None = None,
    shape: Sequence[int] | None = None,
    device: Any = "cpu",
    label: str = "spec",
    weights: str | Path | None = None,
    allow_pickle: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Load the model a SPEC names and wrap it as a noise-to-data map.

    Parameters
    ----------
    spec:
        ``module:function`` (dotted module or ``path/to/file.py``), a model file (TorchScript, or a
        pickled module with ``allow_pickle``), a diffusers folder, or ``gmm:<file.json>``.
    adapter:
        One of :data:`ADAPTERS` (see the module docstring); default ``"denoiser"``, or for a
        diffusers folder the type its scheduler names (an explicit type must agree with it).
    args:
        Keyword arguments of the factory (``module:function`` only); for a diffusers model folder
        ``scheduler=<folder>`` and optionally ``timesteps="nearest"`` (integer timesteps).
    schedule:
        Adapter parameters: ``sigma_max``/``sigma_min`` (denoiser, velocity, score; default 80
        and 0.002), ``beta_schedule`` (``linear``/``scaled_linear``), ``beta_start``,
        ``beta_end``, ``train_steps``, ``timesteps``, ``start`` (eps / v / x0; default the DDPM
        schedule 1e-4..0.02 over 1000 steps), ``time``, ``t_scale`` (velocity), ``process``
        (score: ``ve``/``vp``/``ou``, required), ``beta_min``, ``beta_max``, ``grid`` (flow-map:
        required), ``signature``, ``start_scale`` (flow-map), ``sigma_max`` (consistency); ``grid``
        (eps / v / x0: ``schedule``, ``karras`` or ``loglinear``; see
        :meth:`pfd.adapters.VPDenoiser.ode_map`). A diffusers folder takes ``grid``, ``start``,
        ``sigma_min``, ``sigma_max`` (its schedule comes from the folder). Conditional models:
        ``condition`` (the model keyword that takes the labels, e.g. ``class_labels``),
        ``guidance`` and ``null_condition`` (two-call classifier-free guidance) for diffusion
        types, ``conditional=true`` for one-step / flow-map / consistency students (the labels
        are their last argument).
    kind:
        ``"trajectory"`` or ``"distribution"``: what a raw-map student (one-step, flow-map,
        consistency) was trained to match. A distribution student issues a
        :class:`pfd.adapters.CouplingWarning`: its raw map measures the coupling.
    solver, steps:
        PF-ODE solver and grid points of the diffusion adapters (see :class:`pfd.DiffusionMap`).
    shape:
        Shape of one sample; default: the mixture's, or the model's ``event_shape`` attribute.
    device:
        ``"cpu"`` or ``"cuda"``: where torch modules are moved (TorchScript: ``map_location``).
    label:
        Prefix of every error message (``pfd score`` passes ``--reference`` / ``--student``).
    weights:
        A ``state_dict`` file loaded into the factory's module (strict), see :func:`load_weights`.
    allow_pickle:
        Load a ``torch.save`` file of a whole module (a pickle: it runs code from the file).

    Examples
    --------
    >>> import json, os, tempfile, pfd
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "teacher.json")
    >>> with open(path, "w") as fh:
    ...     json.dump(pfd.GaussianMixture([1.0], [[0.0, 1.0]], [0.5]).to_dict(), fh)
    >>> teacher = pfd.spec.load_map(f"gmm:{path}", steps=8)
    >>> student = pfd.spec.load_map("torch.nn:Identity", adapter="one-step", shape=(2,))
    >>> res = pfd.distance(teacher, student, n=64, progress=False)
    >>> teacher.last_nfe, student.last_nfe, res.n
    (15, 1, 64)
    >>> pfd.spec.load_map("no_such_module:make", label="--student")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --student: cannot import module 'no_such_module' (ModuleNotFoundError: ...); is its folder on PYTHONPATH?
    """
    if adapter is not None and adapter not in ADAPTERS:
        raise ValueError(f"{label}: adapter type must be one of {ADAPTERS}, got {adapter!r}")
    from pfd.adapters.students import check_kind

    try:
        check_kind(kind)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from None
    if schedule is not None and not isinstance(schedule, Mapping):
        raise TypeError(f"{label}: schedule must be a mapping, got {type(schedule).__name__}")
    sched = dict(schedule or {})
    if isinstance(spec, str) and spec.strip() and Path(spec.strip()).is_dir():
        return _load_folder(Path(spec.strip()), adapter, args, sched, kind, solver, steps, shape, device, label, weights)
    adapter = adapter or "denoiser"
    unknown = sorted(set(sched) - set(SCHEDULE_KEYS[adapter]))
    if unknown:
        allowed = ", ".join(SCHEDULE_KEYS[adapter]) or "none"
        raise ValueError(f"{label}: schedule key(s) {unknown} do not apply to adapter type {adapter!r} (allowed: {allowed})")
    try:
        shp = check_shape(shape, "shape") if shape is not None else None
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{label}: {exc}") from None
    obj = load_object(spec, args=args, device=device, label=label, allow_pickle=allow_pickle)
    if weights is not None:
        if not isinstance(spec, str) or spec.strip().startswith("gmm:") or ":" not in spec:
            raise ValueError(f"{label}: weights apply to a factory SPEC (module:function) that builds the module")
        load_weights(obj, weights, label=f"{label}-weights")
    try:
        return _wrap(obj, spec.strip(), adapter, sched, kind, solver, steps, shp, label)
    except (ValueError, TypeError) as exc:
        if str(exc).startswith(label):
            raise
        raise type(exc)(f"{label}: {exc}") from None


def _load_folder(folder: Path, adapter: str | None, args: Mapping[str, Any] | None, sched: dict[str, Any], kind: str,
                 solver: str, steps: int, shape: Sequence[int] | None, device: Any, label: str,
                 weights: str | Path | None) -> Any:
    from pfd.adapters.pipelines import check_loader_args, diffusers_map, load_diffusers

    if weights is not None:
        raise ValueError(f"{label}: a diffusers folder holds its own weights; --weights applies to factory SPECs")
    if args is not None and not isinstance(args, Mapping):
        raise TypeError(f"{label}: args must be a mapping, got {type(args).__name__}")
    opts = check_loader_args(dict(args or {}), label)
    unknown = sorted(set(sched) - set(FOLDER_SCHEDULE_KEYS))
    if unknown:
        raise ValueError(f"{label}: schedule key(s) {unknown} do not apply to a diffusers folder (its schedule is read "
                         f"from the folder; allowed: {', '.join(FOLDER_SCHEDULE_KEYS)})")
    dev = resolve_device(device, name=f"{label}: device")
    try:
        dm = load_diffusers(folder, scheduler=opts.get("scheduler"), device=dev)
        if adapter is not None and adapter != dm.adapter:
            raise ValueError(f"the scheduler {type(dm.scheduler).__name__} makes this a {dm.adapter!r} model, not "
                             f"{adapter!r}; leave the type out to take it from the folder")
        if kind == "distribution" and dm.adapter == "consistency":
            from pfd.adapters.students import COUPLING_MESSAGE, CouplingWarning

            warnings.warn(COUPLING_MESSAGE.format(name=str(folder)), CouplingWarning, stacklevel=3)
        shp = check_shape(shape, "shape") if shape is not None else None
        return diffusers_map(dm, solver=solver, steps=18 if steps is None else steps, grid=sched.get("grid"),
                             start=sched.get("start"),
                             sigma_min=sched.get("sigma_min"), sigma_max=sched.get("sigma_max"),
                             timesteps=opts.get("timesteps", "continuous"), kind=kind, shape=shp, name=str(folder))
    except (ValueError, TypeError, ImportError) as exc:
        if str(exc).startswith(label):
            raise
        raise type(exc)(f"{label}: {exc}") from None


def _wrap(obj: Any, spec: str, adapter: str, sched: dict[str, Any], kind: str, solver: str, steps: int,
          shape: tuple[int, ...] | None, label: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from pfd import adapters as ad
    from pfd.analytic.gmm import GaussianMixture
    from pfd.maps import DiffusionMap

    if isinstance(obj, GaussianMixture):
        if adapter != "denoiser":
            raise ValueError(f"a Gaussian mixture is an analytic denoiser; use adapter type 'denoiser', not {adapter!r}")
        if shape is not None and shape != obj.event_shape:
            raise ValueError(f"the requested sample shape {shape} (shape= / --shape) does not match the mixture's "
                             f"sample shape {obj.event_shape}")
        return obj.ode_map(solver=solver, steps=steps, name=spec, **sched)
    declared = getattr(obj, "event_shape", None)
    if declared is not None:
        declared = check_shape(tuple(declared), "the model's event_shape")
        if shape is not None and shape != declared:
            raise ValueError(f"the requested sample shape {shape} (shape= / --shape) does not match the model's "
                             f"declared event_shape {declared}")
        shape = declared
    rng = {k: sched.pop(k) for k in _RANGE if k in sched}
    cond = {k: sched.pop(k) for k in _COND if k in sched}
    if "conditional" in sched and not isinstance(sched["conditional"], bool):
        raise TypeError(f"schedule key conditional must be true or false, got {sched['conditional']!r}")
    if adapter in ("denoiser", "velocity", "score"):
        if adapter == "denoiser":
            den: Any = ad.EDMDenoiser(obj, **cond)
        elif adapter == "velocity":
            den = ad.FlowMatchingDenoiser(obj, **sched, **cond)
        else:
            if "process" not in sched:
                raise ValueError("a score model needs its forward process: schedule key process=ve|vp|ou")
            den = ad.ScoreDenoiser(obj, **sched, **cond)
        return DiffusionMap(den, solver=solver, steps=steps, shape=shape, name=spec, **rng)
    if adapter in _VP_PREDICTION:
        abar = _vp_alphas_cumprod(sched, label)
        opts = {"timesteps": sched.get("timesteps", "continuous")}
        den = ad.VPDenoiser(obj, abar, _VP_PREDICTION[adapter], name=f"VPDenoiser({adapter})", **opts, **cond)
        grid = sched.get("grid", "karras" if rng else None)
        return den.ode_map(solver=solver, steps=steps, start=sched.get("start", "vp"), grid=grid, shape=shape, name=spec,
                           **rng)
    if kind == "distribution" and adapter != "one-step":  # GeneratorStudent warns on its own
        from pfd.adapters.students import COUPLING_MESSAGE, CouplingWarning

        warnings.warn(COUPLING_MESSAGE.format(name=spec), CouplingWarning, stacklevel=3)
    if adapter == "one-step":
        return ad.GeneratorStudent(obj, kind=kind, shape=shape, name=spec, conditional=sched.get("conditional", False))
    if adapter == "flow-map":
        if "grid" not in sched:
            raise ValueError("a flow-map student needs its time grid: schedule key grid=[t_0, ..., t_K] (noise to data)")
        return ad.FlowMapStudent(obj, sched.pop("grid"), kind=kind, shape=shape, name=spec, **sched)
    return ad.ConsistencyStudent(obj, kind=kind, shape=shape, name=spec, **rng, **sched)


class LabelledMap:
    """A map whose failures name the argument it came from (e.g. ``--student``).

    Non-finite outputs stay :class:`pfd.NonFiniteError` (indices and sigma kept); a
    ValueError/TypeError keeps its type; any other exception raised inside the model (a torch
    RuntimeError, ...) becomes a one-line RuntimeError. Shape, NFE and provenance pass through.

    >>> import torch
    >>> m = LabelledMap(lambda z: z[:, :1] @ torch.ones(2, 2), "--student")
    >>> m(torch.ones(3, 2))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    RuntimeError: --student: the model raised RuntimeError: mat1 and mat2 shapes cannot be multiplied ...
    """

    def __init__(self, base: Callable[[torch.Tensor], torch.Tensor], label: str) -> None:
        if not callable(base):
            raise TypeError(f"{label} must be a callable map, got {type(base).__name__}")
        self.base = base
        self.label = label
        self.shape = map_shape(base)
        self.conditional = is_conditional(base)

    @property
    def last_nfe(self) -> Any:
        return getattr(self.base, "last_nfe", None)

    def describe(self) -> dict[str, Any]:
        return describe_map(self.base)

    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        try:
            return self.base(z) if labels is None else self.base(z, labels)
        except NonFiniteError as exc:
            raise NonFiniteError(exc.indices, exc.sigma, f"{self.label} ({exc.where})") from None
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{self.label}: {' '.join(str(exc).split())}") from None
        except Exception as exc:
            raise RuntimeError(f"{self.label}: the model raised {_one_line(exc)}") from None
