"""PFD in training loops: a reference noise bank computed once, and a monitor with a history.

A distillation run scores its student against a fixed reference map (the teacher) many times.
:class:`NoiseBank` integrates the reference on its canonical noise bank once (in memory, and
optionally on disk under a content key), so every later evaluation costs only the student's
map. :class:`PFDMonitor` decides when to evaluate, runs the student in eval mode without
gradients, keeps the curve in ``history``, appends it to a JSONL log that a crash cannot
corrupt, and saves/restores its state with the training checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from pfd._checks import (
    call_map,
    call_model,
    check_callable,
    check_positive_int,
    eval_mode,
    find_modules,
    is_int,
    progress_context,
)
from pfd._labels import resolve_labels
from pfd._maps import as_student_map, models_behind
from pfd._reduce import gather_or_raise, is_rank_zero, resolve_group, shard_range
from pfd._train import atomic_torch_save
from pfd.estimator import distance
from pfd.maps import CachedMap, describe_map, map_shape
from pfd.noise import BLOCK, NoiseSource, derive_seed
from pfd.report import append_jsonl, atomic_write, check_writable, to_jsonable

__all__ = ["NoiseBank", "PFDMonitor", "read_log", "reference_identity"]

_STATE_VERSION = 1


def _content_hash(fn: Any) -> str | None:
    """SHA-256 of what a callable computes with: ``to_dict()`` of a bound method's owner (or of
    a callable object itself) and the parameters and buffers of every torch module behind it.
    None when nothing is found."""
    h = hashlib.sha256()
    found = False
    owner = getattr(fn, "__self__", None)
    if owner is None and not isinstance(fn, torch.nn.Module):
        owner = fn  # a callable object describing itself with to_dict()
    if owner is not None and callable(getattr(owner, "to_dict", None)):
        h.update(f"{type(owner).__module__}.{type(owner).__qualname__}.{getattr(fn, '__name__', '')}".encode())
        h.update(json.dumps(to_jsonable(owner.to_dict()), sort_keys=True).encode())
        found = True
    for mod in find_modules(fn):
        h.update(f"{type(mod).__module__}.{type(mod).__qualname__}.{getattr(fn, '__name__', '')}".encode())
        for k, v in mod.state_dict().items():
            t = v.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"{k}:{t.dtype}:{tuple(v.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        found = True
    return h.hexdigest() if found else None


def reference_identity(reference: Callable[..., Any], reference_key: str | None = None) -> dict[str, Any]:
    """The identity of a reference map used in cache keys: its provenance (solver, grid,
    tolerances, dtype) plus a content hash of the model behind it (a
    :class:`pfd.GaussianMixture`'s parameters, or a torch module's parameters and buffers), or
    the user's ``reference_key`` when the content cannot be read (plain functions).

    >>> import pfd
    >>> gmm = pfd.GaussianMixture([1.0], [[0.0]], [1.0])
    >>> a = reference_identity(gmm.ode_map())
    >>> b = reference_identity(pfd.GaussianMixture([1.0], [[0.1]], [1.0]).ode_map())
    >>> a["content"] != b["content"], a["map"]["solver"]
    (True, 'heun')
    """
    base = reference
    while isinstance(base, CachedMap):
        base = base.base
    target = base
    for attr in ("denoiser", "fn"):
        if getattr(base, attr, None) is not None:
            target = getattr(base, attr)
            break
    content = _content_hash(target)
    if reference_key is not None:
        if not isinstance(reference_key, str) or not reference_key:
            raise TypeError(f"reference_key must be a non-empty str, got {reference_key!r}")
        content = f"user:{reference_key}" + (f"+{content}" if content else "")
    if content is None:
        raise ValueError(
            "cannot derive a content identity for the reference map (a plain function has no readable "
            "parameters); pass reference_key='<a string that changes whenever the reference changes>'"
        )
    return {"map": describe_map(base), "content": content}


def _check_folder_writable(folder: Path, name: str) -> None:
    """Fail at construction, naming ``name``, unless files can be created in ``folder``."""
    import tempfile

    if not folder.is_dir():
        raise ValueError(f"{name}: folder {str(folder)!r} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".pfd-", suffix=".check", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ValueError(f"{name}: folder {str(folder)!r} is not writable ({exc.strerror or exc})") from None


class NoiseBank:
    """A reference map's outputs on the canonical noise rows ``0 .. n-1`` of ``seed``.

    Outputs are computed on demand, once: :meth:`outputs` fills missing rows in batches and
    :meth:`prepare` fills all of them (split across ranks when torch.distributed is
    initialised, then gathered). With ``cache_dir`` the full bank is also stored on disk as
    ``bank-<key>.pt``; the key hashes the reference's identity (:func:`reference_identity`:
    solver, grid, tolerances and model content), n, seed, shape, the noise definition and the
    pfd and torch versions, and the stored key is compared in full on load, so a changed
    reference can never be served from a stale file. :meth:`as_map` is a noise-to-data map
    that serves bank rows to :func:`pfd.distance` (matched by content, verified exactly) and
    falls back to the reference for any other noise.

    >>> import pfd
    >>> gmm = pfd.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.1, 0.1])
    >>> bank = NoiseBank(gmm.ode_map(), n=64, seed=0)
    >>> ref = bank.as_map()
    >>> r1 = pfd.distance(ref, gmm.ode_map(steps=6), n=64, progress=False)  # computes the bank
    >>> r2 = pfd.distance(ref, gmm.ode_map(steps=6), n=64, progress=False)  # served from it
    >>> r3 = pfd.distance(gmm.ode_map(), gmm.ode_map(steps=6), n=64, progress=False)
    >>> r1.value == r2.value == r3.value, bank.computed_rows, (ref.misses, ref.hits)
    (True, 64, (1, 1))
    """

    def __init__(
        self,
        reference: Callable[[torch.Tensor], torch.Tensor],
        n: int,
        *,
        seed: int = 0,
        shape: Sequence[int] | None = None,
        batch_size: int = 1024,
        cache_dir: str | os.PathLike[str] | None = None,
        reference_key: str | None = None,
        labels: Any = None,
    ) -> None:
        check_callable(reference, "reference", "a callable noise-to-data map")
        self.reference = reference
        self.n = check_positive_int(n, "n", minimum=2)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        derive_seed(seed)
        self.seed = seed
        declared = map_shape(reference)
        if shape is not None:
            shape = (shape,) if isinstance(shape, int) else tuple(shape)
            if declared is not None and tuple(declared) != shape:
                raise ValueError(f"shape={shape} does not match the reference map's sample shape {declared}")
        shape = shape if shape is not None else declared
        if shape is None:
            raise ValueError("shape= is required: the reference map does not declare the shape of a sample")
        self.shape: tuple[int, ...] = NoiseSource(seed, shape).shape
        self.noise = NoiseSource(seed, self.shape).get(0, self.n)
        conds = resolve_labels(labels, seed, (reference,), self.n, ("reference",))
        self.labels: torch.Tensor | None = None if conds is None else conds.rows(0, self.n)
        self._out = torch.empty((self.n, *self.shape), dtype=torch.float64)
        self._have = torch.zeros(self.n, dtype=torch.bool)
        self._nfe: float | None = 0.0
        self._index: dict[bytes, int] | None = None
        self.reference_key = reference_key
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        if self.cache_dir is not None:
            _check_folder_writable(self.cache_dir, "cache_dir")
        self._key_text: str | None = None
        if self.cache_dir is not None:  # fail early when no identity can be derived
            self._key_text = self._make_key_text()
        self.reference_seconds = 0.0
        self.loaded_from_disk = False

    # -- identity and disk cache ---------------------------------------------------------
    def _make_key_text(self) -> str:
        from pfd.estimator import versions

        v = versions()
        material = {
            "reference": reference_identity(self.reference, self.reference_key),
            "n": self.n,
            "seed": self.seed,
            "shape": list(self.shape),
            "noise": {"block": BLOCK, "generator": "torch.randn/SeedSequence"},
            "labels": None if self.labels is None else hashlib.sha256(self.labels.contiguous().numpy().tobytes()).hexdigest(),
            "versions": {"pfd": v["pfd"], "torch": v["torch"]},
        }
        return json.dumps(to_jsonable(material), sort_keys=True)

    @property
    def cache_path(self) -> Path | None:
        """Where this bank is (or would be) stored on disk; None without ``cache_dir``."""
        if self.cache_dir is None:
            return None
        if self._key_text is None:
            self._key_text = self._make_key_text()
        return self.cache_dir / f"bank-{hashlib.sha256(self._key_text.encode()).hexdigest()[:32]}.pt"

    def _load(self) -> bool:
        path = self.cache_path
        if path is None or not path.is_file():
            return False
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unreadable file: recompute, never trust it
            warnings.warn(f"ignoring unreadable bank cache {path}: {exc}", RuntimeWarning, stacklevel=3)
            return False
        if not isinstance(blob, dict) or blob.get("key") != self._key_text:
            return False
        out = blob.get("outputs")
        if not isinstance(out, torch.Tensor) or out.shape != self._out.shape:
            return False
        self._out.copy_(out.to(torch.float64))
        self._have.fill_(True)
        self._nfe = blob.get("nfe_total")
        self.loaded_from_disk = True
        return True

    def _save(self) -> None:
        path = self.cache_path
        if path is None or not self.complete:
            return
        atomic_torch_save({"key": self._key_text, "outputs": self._out.clone(), "nfe_total": self._nfe}, path)

    # -- computing rows ------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return bool(self._have.all())

    @property
    def computed_rows(self) -> int:
        return int(self._have.sum())

    @property
    def reference_nfe(self) -> float | None:
        """Mean reference evaluations per sample over the computed rows (None if not counted)."""
        rows = self.computed_rows
        return None if self._nfe is None or rows == 0 else self._nfe / rows

    def _compute(self, lo: int, hi: int) -> None:
        t0 = time.perf_counter()
        with torch.inference_mode(False), torch.no_grad():
            for start in range(lo, hi, self.batch_size):
                stop = min(hi, start + self.batch_size)
                lab = None if self.labels is None else self.labels[start:stop]
                x = call_map(self.reference, self.noise[start:stop], "reference map", start, labels=lab)
                self._out[start:stop] = x.detach().to("cpu", torch.float64)
                self._have[start:stop] = True
                nfe = getattr(self.reference, "last_nfe", None)
                self._nfe = None if nfe is None or self._nfe is None else self._nfe + float(nfe) * (stop - start)
        self.reference_seconds += time.perf_counter() - t0

    def outputs(self, lo: int, hi: int) -> torch.Tensor:
        """Reference outputs for bank rows ``[lo, hi)``, computing any missing rows once."""
        if not (0 <= lo <= hi <= self.n):
            raise ValueError(f"rows must satisfy 0 <= lo <= hi <= n={self.n}, got lo={lo}, hi={hi}")
        missing = torch.nonzero(~self._have[lo:hi]).flatten()
        if missing.numel():
            self._compute(lo + int(missing[0]), lo + int(missing[-1]) + 1)
        return self._out[lo:hi].clone()

    def prepare(self, group: Any = None) -> NoiseBank:
        """Fill the whole bank: from disk if a matching file exists, else by computing it (each
        rank a shard when distributed, then gathered to every rank); then store it on disk."""
        if self.complete or self._load():
            return self
        info = resolve_group(group)
        if info is None:
            self.outputs(0, self.n)
        else:
            grp, rank, world = info
            lo, hi = shard_range(self.n, rank, world)
            error = None
            try:
                self.outputs(lo, hi)
            except Exception as exc:
                error = exc
            mine = (lo, hi, self._out[lo:hi].clone(), None if self._nfe is None else self._nfe)
            parts = gather_or_raise(mine, error, grp, world, "reference bank failed on ")
            nfe: float | None = 0.0
            for p_lo, p_hi, out, p_nfe in parts:
                self._out[p_lo:p_hi] = out
                self._have[p_lo:p_hi] = True
                nfe = None if nfe is None or p_nfe is None else nfe + p_nfe
            self._nfe = nfe
        if is_rank_zero():
            self._save()
        return self

    def clear(self) -> None:
        """Forget every computed row (e.g. after the reference model changed)."""
        self._have.fill_(False)
        self._nfe = 0.0
        self._key_text = None if self.cache_dir is None else self._make_key_text()
        self.loaded_from_disk = False

    def as_map(self) -> BankMap:
        """A noise-to-data map serving this bank to :func:`pfd.distance`."""
        return BankMap(self)

    def _row_index(self) -> dict[bytes, int]:
        if self._index is None:
            flat = self.noise.reshape(self.n, -1).contiguous().numpy()
            self._index = {hashlib.sha1(flat[i].tobytes()).digest(): i for i in range(self.n)}
        return self._index

    def locate(self, z: torch.Tensor) -> int | None:
        """The bank row where the noise batch ``z`` starts, if ``z`` is a run of bank rows."""
        if z.ndim < 2 or tuple(z.shape[1:]) != self.shape or z.shape[0] == 0:
            return None
        zc = z.detach().to("cpu", torch.float64)
        start = self._row_index().get(hashlib.sha1(zc[0].contiguous().numpy().tobytes()).digest())
        if start is None or start + zc.shape[0] > self.n:
            return None
        return start if torch.equal(zc, self.noise[start : start + zc.shape[0]]) else None


class BankMap:
    """Noise-to-data map backed by a :class:`NoiseBank` (made by :meth:`NoiseBank.as_map`)."""

    def __init__(self, bank: NoiseBank) -> None:
        self.bank = bank
        self.shape = bank.shape
        self.conditional = bank.labels is not None
        self.last_nfe: float | None = None
        self.hits = 0
        self.misses = 0

    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        start = self.bank.locate(z)
        if start is not None and self.conditional:
            stored = self.bank.labels[start : start + z.shape[0]]
            if labels is None or not torch.equal(labels.detach().to("cpu"), stored):
                start = None  # other conditions than the bank's: not bank rows
        if start is None:  # not bank noise: evaluate the reference itself
            self.misses += 1
            out = call_model(self.bank.reference, z) if labels is None else call_model(self.bank.reference, z, labels)
            self.last_nfe = getattr(self.bank.reference, "last_nfe", None)
            return out
        stop = start + z.shape[0]
        if not bool(self.bank._have[start:stop].all()):
            self.misses += 1
        else:
            self.hits += 1
        out = self.bank.outputs(start, stop)
        self.last_nfe = self.bank.reference_nfe
        return out

    def describe(self) -> dict[str, Any]:
        return {"type": "NoiseBank", "reference": describe_map(self.bank.reference), "n": self.bank.n,
                "seed": self.bank.seed, "cache": None if self.bank.cache_path is None else str(self.bank.cache_path)}

    def __repr__(self) -> str:
        return f"BankMap(n={self.bank.n}, rows={self.bank.computed_rows}, hits={self.hits}, misses={self.misses})"


def _repair_tail(path: Path) -> None:
    """Cut an incomplete last line (left by a crash mid-write) so that new lines start clean."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if data and not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) while checking and
    appending, so that two processes cannot interleave a check and a write (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the tail check alone
        yield
        return
    fd = os.open(os.fspath(path), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _last_record(path: Path) -> dict[str, Any] | None:
    """The last complete JSON record of a log (reads only its tail)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            lines = [ln for ln in fh.read().split(b"\n") if ln.strip()]
    except FileNotFoundError:
        return None
    for ln in reversed(lines):
        try:
            return json.loads(ln)
        except json.JSONDecodeError:
            continue
    return None


def read_log(path: str | os.PathLike[str], run: str | None = None) -> list[dict[str, Any]]:
    """Records of a monitor's JSONL log; an incomplete last line (a crash mid-write) is skipped.

    A corrupt line anywhere else is skipped with a warning. ``run`` keeps only the records of one
    run (a monitor's ``run_id``; a log may hold several runs one after another).
    """
    if run is not None:
        return [r for r in read_log(path) if r.get("run") == run]
    records = []
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                warnings.warn(f"{path}: skipping corrupt line {i + 1}", RuntimeWarning, stacklevel=2)
    return records


class PFDMonitor:
    """PFD of a student against a fixed reference, evaluated periodically during training.

    The reference map is integrated once on a bank of ``n`` canonical noise vectors of ``seed``
    (a :class:`NoiseBank`, optionally cached on disk in ``cache_dir``); each evaluation then runs
    only the student's map. Evaluations put the student in eval mode under
    ``torch.inference_mode`` and restore its training flags. Under ``torch.distributed`` every
    rank must call :meth:`maybe_evaluate` (the noise is split across ranks, the value is the
    single-process value) and only rank 0 writes the log.

    Parameters
    ----------
    reference:
        The reference (teacher) noise-to-data map, e.g. ``pfd.DiffusionMap(teacher)``.
    n, seed:
        Size and seed of the noise bank.
    every:
        :meth:`maybe_evaluate` evaluates at steps that are multiples of ``every``.
    log_path:
        JSONL file to append one record per evaluation to (append-only, fsynced).
    shape, batch_size, cache_dir, reference_key:
        See :class:`NoiseBank`. ``batch_size`` never changes the value.
    labels:
        Conditions of the bank rows for conditional maps (see :func:`pfd.distance`): a number of
        classes or class probabilities (canonical labels of ``seed``) or one class id per row;
        the reference and a conditional student get the same label for each noise row.
    descriptor, group:
        See :func:`pfd.distance`.

    Example
    -------
    >>> import torch, pfd
    >>> teacher = pfd.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.05, 0.05])
    >>> mon = pfd.PFDMonitor(teacher.ode_map(), n=128, every=10)
    >>> student = torch.nn.Linear(1, 1)
    >>> mon.maybe_evaluate(student, step=5) is None
    True
    >>> rec = mon.maybe_evaluate(student, step=10)
    >>> rec["step"], rec["nfe"], rec["n"], len(mon.history), student.training
    (10, 1.0, 128, 1, True)
    """

    def __init__(
        self,
        reference: Callable[[torch.Tensor], torch.Tensor],
        n: int = 2048,
        seed: int = 0,
        *,
        every: int = 1000,
        log_path: str | os.PathLike[str] | None = None,
        shape: Sequence[int] | None = None,
        batch_size: int = 1024,
        cache_dir: str | os.PathLike[str] | None = None,
        reference_key: str | None = None,
        descriptor: Callable[[torch.Tensor], torch.Tensor] | None = None,
        group: Any = None,
        progress: bool = False,
        labels: Any = None,
    ) -> None:
        self.bank = NoiseBank(reference, n, seed=seed, shape=shape, batch_size=batch_size,
                              cache_dir=cache_dir, reference_key=reference_key, labels=labels)
        self.every = check_positive_int(every, "every")
        if log_path is not None:
            log_path = check_writable(log_path, "log_path")
        self.log_path: Path | None = log_path
        if descriptor is not None and not callable(descriptor):
            raise TypeError(f"descriptor must be callable or None, got {type(descriptor).__name__}")
        self.descriptor = descriptor
        self.group = group
        self.progress = bool(progress)
        self.history: list[dict[str, Any]] = []
        self._ref_map = self.bank.as_map()
        self.run_id = uuid.uuid4().hex[:12]
        self._log_tail: int | None = None  # the step of this run's last record in the log

    @property
    def reference(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.bank.reference

    @property
    def n(self) -> int:
        return self.bank.n

    @property
    def seed(self) -> int:
        return self.bank.seed

    @property
    def shape(self) -> tuple[int, ...]:
        return self.bank.shape

    def should_evaluate(self, step: int) -> bool:
        """True at multiples of ``every`` not evaluated yet (e.g. before a resume)."""
        if not is_int(step) or step < 0:
            raise TypeError(f"step must be an int >= 0, got {step!r}")
        step = int(step)
        return step % self.every == 0 and all(h["step"] != step for h in self.history)

    def maybe_evaluate(self, student: Any, step: int) -> dict[str, Any] | None:
        """Evaluate ``student`` if ``step`` is due (see :meth:`should_evaluate`), else None."""
        return self.evaluate(student, step) if self.should_evaluate(step) else None

    def evaluate(self, student: Any, step: int) -> dict[str, Any]:
        """Evaluate now: a record with step, pfd, stderr, ci95, n, nfe (student, per sample),
        seconds (this call), reference_seconds (reference work done in this call)."""
        if not is_int(step) or step < 0:
            raise TypeError(f"step must be an int >= 0, got {step!r}")
        step = int(step)
        smap = as_student_map(student, self.shape)
        t0 = time.perf_counter()
        ref_before = self.bank.reference_seconds
        with progress_context(self.progress):
            self.bank.prepare(self.group)
        with eval_mode(*models_behind(student)), torch.inference_mode():
            res = distance(self._ref_map, smap, n=self.n, seed=self.seed, batch_size=self.bank.batch_size,
                           descriptor=self.descriptor, progress=self.progress, group=self.group,
                           labels=self.bank.labels)
        rec = {
            "step": step,
            "pfd": res.value,
            "stderr": res.stderr,
            "ci95": list(res.ci95),
            "n": res.n,
            "nfe": res.nfe[1],
            "reference_nfe": res.nfe[0],
            "seconds": time.perf_counter() - t0,
            "reference_seconds": self.bank.reference_seconds - ref_before,
            "world_size": res.provenance.get("world_size", 1),
            "time": time.time(),
            "run": self.run_id,
        }
        if self.log_path is not None and is_rank_zero():
            with _locked(self.log_path):
                self._check_log_tail()
                _repair_tail(self.log_path)
                append_jsonl(self.log_path, rec)
            self._log_tail = step
        self.history.append(rec)
        return rec

    def _check_log_tail(self) -> None:
        """This run's last record must still be the log's last record: anything else means another
        monitor (another process, or a second monitor on the same ``log_path``) writes to it too."""
        if self._log_tail is None:
            return
        last = _last_record(self.log_path)
        if last is None or last.get("run") != self.run_id or last.get("step") != self._log_tail:
            who = "nothing (the log was emptied)" if last is None else f"run {last.get('run')!r}, step {last.get('step')!r}"
            raise ValueError(
                f"log_path {str(self.log_path)!r} is shared: after this monitor's record of step {self._log_tail} "
                f"(run {self.run_id!r}) the log ends with {who}. Two monitors writing one log would interleave their "
                "curves: give each run its own log_path"
            )

    @property
    def last(self) -> dict[str, Any] | None:
        return self.history[-1] if self.history else None

    def _fingerprint(self) -> dict[str, Any]:
        return to_jsonable({"n": self.n, "seed": self.seed, "shape": list(self.shape),
                            "reference": describe_map(self.reference)})

    def state_dict(self) -> dict[str, Any]:
        """The monitor's state (history, run id and configuration fingerprint), for checkpoints."""
        return {"version": _STATE_VERSION, "fingerprint": self._fingerprint(), "run": self.run_id,
                "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the history of a resumed run; refuses a state of a different configuration."""
        if not isinstance(state, dict) or "history" not in state or "fingerprint" not in state:
            raise TypeError("state must be a dict made by PFDMonitor.state_dict()")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"state version {state.get('version')!r} is not supported (expected {_STATE_VERSION})")
        if state["fingerprint"] != self._fingerprint():
            raise ValueError(
                "state was saved by a monitor with a different n, seed, shape or reference map: "
                f"{state['fingerprint']} != {self._fingerprint()}"
            )
        self.history = [dict(h) for h in state["history"]]
        if isinstance(state.get("run"), str):
            self.run_id = state["run"]  # the same run, continued
        if self.log_path is not None and is_rank_zero():
            self._rewind_log()

    def _rewind_log(self) -> None:
        """Make the log continue from the checkpoint: this run's records after the checkpoint's last
        evaluation are removed (training repeats those steps and evaluates them again), records of
        the checkpoint missing from the log are restored, and other runs' records are kept."""
        with _locked(self.log_path):
            old = read_log(self.log_path) if self.log_path.exists() else []
            ours = {self.run_id, None}  # records without a run id predate run ids: treated as this run's
            kept = [r for r in old if r.get("run") not in ours] + [dict(h) for h in self.history]
            if kept != old:
                text = "".join(json.dumps(to_jsonable(r)) + "\n" for r in kept).encode("utf-8")
                atomic_write(self.log_path, lambda fh: fh.write(text))
        self._log_tail = self.history[-1]["step"] if self.history else None
        if self._log_tail is not None and self.history[-1].get("run") != self.run_id:
            self._log_tail = None  # a checkpoint from before run ids: nothing to compare the tail with

    def __repr__(self) -> str:
        return f"PFDMonitor(n={self.n}, seed={self.seed}, every={self.every}, evaluations={len(self.history)})"
