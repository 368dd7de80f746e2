"""Cost of giving every map its own copy of the noise and every model call its own copy of the state.

pfd passes private copies (``pfd._checks.call_model``) so that a model modifying its input in place
cannot corrupt the other map's noise or the solver state. This times ``pfd.distance`` with the copies
and with them switched off (the callers' tensors passed by reference), interleaved, min of repeats:

* a cheap one-step map on (3, 32, 32) images (worst case: the copy is comparable to the model);
* the analytic 2-D mixture's Heun-18 map (35 model calls per sample, each with a copied state);
* an MLP denoiser (width 256, d = 64) under Heun-18 through the EDM adapter (two copies per call).

Writes benchmarks/results/copy_overhead.json. Run: ``python benchmarks/copy_overhead.py``.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

import pfd
import pfd._checks as checks

MODULES = ["pfd.estimator", "pfd.maps", "pfd.adapters.diffusion", "pfd.adapters.students", "pfd._checks"]


def _by_reference(fn, *args, **kwargs):
    return fn(*args, **kwargs)


def _set_copies(on: bool) -> None:
    import importlib

    impl = checks.call_model if on else _by_reference
    for name in MODULES:
        importlib.import_module(name).call_model = impl


def main() -> None:
    torch.set_num_threads(1)
    real = checks.call_model
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1).double()
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.SiLU(), torch.nn.Linear(256, 64)).double()
    g2 = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.1, 0.1])
    g64 = pfd.GaussianMixture([1.0], [[0.0] * 64], [1.0])
    cases = {
        "one-step conv on 3x32x32 (n=2048)": (pfd.OneStepMap(lambda z: z, shape=(3, 32, 32)),
                                             pfd.OneStepMap(conv, shape=(3, 32, 32)), 2048),
        "GMM 2-D, Heun 18 (n=4096)": (g2.ode_map(), g2.ode_map(steps=10), 4096),
        "MLP denoiser d=64 via EDMDenoiser, Heun 18 (n=1024)": (
            g64.ode_map(), pfd.DiffusionMap(pfd.adapters.EDMDenoiser(lambda x, s: x - 0.01 * mlp(x)), shape=(64,)), 1024),
    }
    rows = []
    for label, (a, b, n) in cases.items():
        times = {True: [], False: []}
        vals = {}
        for _ in range(5):
            for on in (True, False):
                _set_copies(on)
                t0 = time.perf_counter()
                vals[on] = pfd.distance(a, b, n=n, batch_size=1024, progress=False).value
                times[on].append(time.perf_counter() - t0)
        _set_copies(True)
        with_c, without = min(times[True]), min(times[False])
        rows.append({"case": label, "seconds_with_copies": with_c, "seconds_without": without,
                     "overhead": with_c / without - 1.0, "same_value": vals[True] == vals[False]})
        print(f"{label:55s} with copies {with_c:.3f} s, without {without:.3f} s, overhead {100 * (with_c / without - 1):+.1f}%")
    checks.call_model = real
    out = Path(__file__).with_name("results") / "copy_overhead.json"
    out.parent.mkdir(exist_ok=True)
    from pfd.report import write_json

    write_json(out, {"config": {"threads": 1, "repeats": 5, "statistic": "min", "batch_size": 1024,
                                "machine": platform.machine(), "torch": torch.__version__, "pfd": pfd.__version__,
                                "note": "shared 2-core machine under load; min of interleaved repeats"},
                     "rows": rows, "complete": True})


if __name__ == "__main__":
    main()
