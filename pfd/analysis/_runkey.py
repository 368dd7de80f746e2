"""Keys of stored runs and checkpoints: the settings that determine a result (internal).

A resumable sweep stores finished runs (JSONL lines) and checkpoints; a rerun in the same place
may ask for other settings (another ``--steps``, ``--lr``, teacher, evaluation size...). Every
stored item therefore carries the settings that determine it (:func:`run_settings`: the given
settings plus the pfd and torch versions) and their digest (:func:`settings_key`); a reader only
reuses items whose key matches and names the differing settings otherwise
(:func:`settings_diff`), so results made with different settings are never mixed.

>>> a = run_settings(lr=2e-3, steps=100)
>>> b = run_settings(lr=1e-3, steps=100)
>>> settings_key(a) == settings_key(run_settings(steps=100, lr=2e-3)), settings_key(a) == settings_key(b)
(True, False)
>>> settings_diff(a, b)
['lr: 0.002 stored, 0.001 now']
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["check_settings", "load_checkpoint", "run_settings", "settings_diff", "settings_key"]


def run_settings(**settings: Any) -> dict[str, Any]:
    """The settings that determine a stored result, JSON-normalised, with the pfd and torch versions
    (a new version may change the numbers, so its results are not reused either)."""
    import torch

    from pfd import __version__
    from pfd.report import to_jsonable

    out = to_jsonable(dict(settings))
    out.setdefault("versions", {"pfd": __version__, "torch": torch.__version__.split("+")[0]})
    return json.loads(json.dumps(out, sort_keys=True))  # the exact form a JSON file gives back


def settings_key(settings: dict[str, Any]) -> str:
    """A 16-hex-digit digest of ``settings`` (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def settings_diff(stored: dict[str, Any] | None, wanted: dict[str, Any]) -> list[str]:
    """The settings that differ, as ``'name: <stored> stored, <wanted> now'`` lines."""
    stored = stored or {}
    out = []
    for k in sorted(set(stored) | set(wanted)):
        if stored.get(k) != wanted.get(k):
            def show(v: Any) -> str:
                t = json.dumps(v, sort_keys=True) if v is not None else "(absent)"
                return t if len(t) <= 60 else t[:57] + "..."

            out.append(f"{k}: {show(stored.get(k))} stored, {show(wanted.get(k))} now")
    return out


def check_settings(stored: dict[str, Any] | None, wanted: dict[str, Any], what: str, hint: str) -> None:
    """Raise a ValueError naming ``what`` and every differing setting unless ``stored == wanted``."""
    diff = settings_diff(stored, wanted)
    if diff:
        raise ValueError(f"{what} was made with other settings ({'; '.join(diff)}); {hint}")


def load_checkpoint(path: str | os.PathLike[str], what: str = "checkpoint") -> dict[str, Any]:
    """``torch.load`` of a pfd checkpoint; a truncated or foreign file raises a ValueError naming it."""
    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a crash mid-copy, a foreign file, a different torch pickle
        raise ValueError(f"{what} {str(path)!r} cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                         "it is truncated or not a pfd checkpoint: delete it to start over") from None
    if not isinstance(state, dict):
        raise ValueError(f"{what} {str(path)!r} is not a pfd checkpoint (holds a {type(state).__name__}); "
                         "delete it to start over")
    return state
