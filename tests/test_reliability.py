"""Reliability audit: every bad input a user can give the public API and `pfd score` gets a clear error that
names the argument -- no deep torch error, no silent acceptance, no partial output file, and the user's model
comes back in the mode it came in. docs/reliability.md lists every case; test_table_matches_tests keeps the
table and this module in agreement."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import pfd
from pfd.cli import main
from pfd.monitor import read_log
from pfd.spec import load_map

ROOT = Path(__file__).resolve().parents[1]
G2 = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.1, 0.1])
G3 = pfd.GaussianMixture([1.0], [[0.0, 0.0, 0.0]], [0.5])
X = torch.zeros(2, 2, dtype=torch.float64)
HAS_CUDA = torch.cuda.is_available()


def _sys_is_read_only() -> bool:
    try:
        fd, tmp = tempfile.mkstemp(dir="/sys")
    except OSError:
        return True
    os.close(fd)
    os.unlink(tmp)
    return False


RO = pytest.mark.skipif(not _sys_is_read_only(), reason="/sys is writable here: no read-only folder to test with")


def _noisy_denoiser():
    """A denoiser with noise in its output (dropout left on, a stochastic layer): not smooth in x or sigma."""
    g = torch.Generator().manual_seed(0)
    return lambda x, s: G2.denoiser(x, s) + 1e-3 * torch.randn(x.shape, dtype=x.dtype, generator=g)


def m2(steps=4):
    return G2.ode_map(steps=steps)


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A user's folder: the factory module, a corrupt TorchScript file and mixture JSON files."""
    d = tmp_path_factory.mktemp("user")
    shutil.copy(Path(__file__).with_name("_score_models.py"), d / "user_models.py")
    (d / "corrupt.pt").write_bytes(b"PK\x03\x04 this is not a TorchScript archive" * 8)
    (d / "teacher.json").write_text(json.dumps(G2.to_dict()))
    (d / "teacher3d.json").write_text(json.dumps(G3.to_dict()))
    (d / "nonpsd.json").write_text(json.dumps({"weights": [1.0], "means": [[0.0, 0.0]],
                                                "covs": [[[1.0, 2.0], [2.0, 1.0]]]}))
    (d / "broken.json").write_text('{"weights": [1.0], "means": ')
    return d


CG2 = pfd.ConditionalGaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.1, 0.1], labels=[0, 1])


# ------------------------------------------------------------------------------------------------ public API
# (id, bad input, call, exception type, text the message must contain -- the argument's name)
API_CASES = [
    ("distance-a-not-callable", "a map that is not callable", lambda d: pfd.distance(42, m2(), n=4, progress=False),
     TypeError, "a must be a callable"),
    ("distance-n-1", "n = 1 (no confidence interval possible)", lambda d: pfd.distance(m2(), m2(), n=1, progress=False),
     ValueError, "n must be >= 2"),
    ("distance-n-float", "n = 2.5", lambda d: pfd.distance(m2(), m2(), n=2.5, progress=False), TypeError, "n must be an int"),
    ("distance-maps-different-shapes", "maps of different output shape (declared)",
     lambda d: pfd.distance(m2(), G3.ode_map(steps=4), n=4, progress=False), ValueError, "different sample shapes"),
    ("distance-map-returns-wrong-shape", "a map that returns another shape than its noise",
     lambda d: pfd.distance(lambda z: z[:, :1], lambda z: z, n=4, shape=(2,), progress=False), ValueError,
     "map a returned shape (4, 1)"),
    ("distance-map-returns-non-tensor", "a map that returns a list",
     lambda d: pfd.distance(lambda z: z.tolist(), lambda z: z, n=4, shape=(2,), progress=False), TypeError,
     "map a must return a torch.Tensor"),
    ("distance-noise-rows-mismatch", "noise with 4 rows and n = 5",
     lambda d: pfd.distance(m2(), m2(), n=5, noise=torch.zeros(4, 2), progress=False), ValueError, "rows of noise"),
    ("distance-noise-wrong-sample-shape", "noise of sample shape (3,) for 2-D maps",
     lambda d: pfd.distance(m2(), m2(), noise=torch.zeros(4, 3), progress=False), ValueError, "noise must have shape"),
    ("distance-noise-int-dtype", "integer noise",
     lambda d: pfd.distance(m2(), m2(), noise=torch.zeros(4, 2, dtype=torch.int64), progress=False), ValueError,
     "noise must be a floating tensor"),
    ("distance-noise-numpy", "noise as a numpy array",
     lambda d: pfd.distance(m2(), m2(), noise=np.zeros((4, 2)), progress=False), TypeError, "noise must be a torch.Tensor"),
    ("distance-noise-nan", "noise containing NaN",
     lambda d: pfd.distance(m2(), m2(), noise=torch.tensor([[0.0, 0.0], [float("nan"), 1.0]]), progress=False),
     ValueError, "noise must be finite; rows [1]"),
    ("distance-noise-meta-device", "noise on the meta device (no data)",
     lambda d: pfd.distance(m2(), m2(), noise=torch.zeros(4, 2, device="meta"), progress=False), ValueError,
     "noise must hold values"),
    ("distance-seed-negative", "seed = -1", lambda d: pfd.distance(m2(), m2(), n=4, seed=-1, progress=False), ValueError,
     "seed must be >= 0"),
    ("distance-batch-size-0", "batch_size = 0", lambda d: pfd.distance(m2(), m2(), n=4, batch_size=0, progress=False),
     ValueError, "batch_size must be >= 1"),
    ("distance-shape-missing", "maps that do not declare a shape, no shape=",
     lambda d: pfd.distance(lambda z: z, lambda z: z, n=4, progress=False), ValueError, "shape= is required"),
    ("distance-descriptor-not-callable", "descriptor = 'inception'",
     lambda d: pfd.distance(m2(), m2(), n=4, descriptor="inception", progress=False), TypeError, "descriptor must be callable"),
    ("map-sigma-min-ge-max", "sigma_min >= sigma_max",
     lambda d: pfd.DiffusionMap(G2.denoiser, sigma_max=1.0, sigma_min=2.0), ValueError, "sigma_min must be < sigma_max"),
    ("map-sigma-min-zero", "sigma_min = 0", lambda d: pfd.DiffusionMap(G2.denoiser, sigma_min=0.0), ValueError,
     "sigma_min must be a finite number > 0"),
    ("map-sigma-max-negative", "sigma_max < 0", lambda d: pfd.DiffusionMap(G2.denoiser, sigma_max=-1.0), ValueError,
     "sigma_max must be a finite number > 0"),
    ("map-unknown-solver", "solver = 'rk45'", lambda d: pfd.DiffusionMap(G2.denoiser, solver="rk45"), ValueError,
     "solver must be one of"),
    ("map-steps-1", "steps = 1", lambda d: pfd.DiffusionMap(G2.denoiser, steps=1), ValueError, "steps must be >= 2"),
    ("map-model-dtype-int", "model_dtype = torch.int32",
     lambda d: pfd.DiffusionMap(G2.denoiser, model_dtype=torch.int32), TypeError, "model_dtype must be a floating"),
    ("map-denoiser-not-callable", "a denoiser that is a tensor", lambda d: pfd.DiffusionMap(torch.zeros(2)), TypeError,
     "denoiser must be callable"),
    ("map-noise-int-dtype", "integer noise into a map", lambda d: m2()(torch.zeros(3, 2, dtype=torch.int64)), TypeError,
     "noise z must be a floating-point tensor"),
    ("map-noise-wrong-shape", "noise (3, 5) into a 2-D map", lambda d: m2()(torch.zeros(3, 5)), ValueError,
     "noise z must have shape (n, 2)"),
    ("map-denoiser-wrong-output-shape", "a denoiser returning another shape",
     lambda d: pfd.DiffusionMap(lambda x, s: x[:, :1], shape=(2,), steps=2)(torch.zeros(3, 2)), ValueError,
     "returned shape (3, 1) for input of shape (3, 2)"),
    ("denoiser-sigma-zero", "sigma = 0 into a denoiser", lambda d: G2.denoiser(X, 0.0), ValueError, "sigma must be > 0"),
    ("denoiser-sigma-negative", "negative sigma tensor", lambda d: G2.denoiser(X, torch.tensor([1.0, -0.1])), ValueError,
     "sigma must be > 0"),
    ("denoiser-sigma-wrong-length", "sigma of length 3 for a batch of 2", lambda d: G2.denoiser(X, torch.ones(3)),
     ValueError, "sigma must be a float or a tensor of shape (2,)"),
    ("denoiser-x-wrong-dim", "x of dimension 3 into a 2-D mixture",
     lambda d: G2.denoiser(torch.zeros(2, 3, dtype=torch.float64), 1.0), ValueError, "x must have shape (B, 2)"),
    ("denoiser-x-int", "integer x", lambda d: G2.denoiser(torch.zeros(2, 2, dtype=torch.int64), 1.0), TypeError,
     "x must be a floating-point tensor"),
    ("gmm-non-psd-cov", "a covariance with a negative eigenvalue",
     lambda d: pfd.GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]]), ValueError,
     "covs must be positive semi-definite"),
    ("gmm-negative-variance", "a negative variance", lambda d: pfd.GaussianMixture([1.0], [[0.0, 0.0]], [-1.0]),
     ValueError, "covs (isotropic variances) must be >= 0"),
    ("gmm-nonpositive-weight", "a weight <= 0", lambda d: pfd.GaussianMixture([0.0, 1.0], [[0.0], [1.0]], [1.0, 1.0]),
     ValueError, "weights must all be > 0"),
    ("gmm-means-wrong-shape", "means of shape (3, 2) for 2 weights",
     lambda d: pfd.GaussianMixture([0.5, 0.5], [[0.0, 0.0]] * 3, [1.0, 1.0]), ValueError, "means must have shape (K, d)"),
    ("gmm-empirical-empty", "an empty training set", lambda d: pfd.GaussianMixture.empirical(torch.zeros(0, 2)),
     ValueError, "points must contain at least one training point"),
    ("gmm-from-dict-missing-keys", "a mixture dict without means and covs",
     lambda d: pfd.GaussianMixture.from_dict({"weights": [1.0]}), ValueError, "data is missing the key(s)"),
    ("student-kind-undeclared", "a one-step student without kind=",
     lambda d: pfd.adapters.GeneratorStudent(lambda z: z, kind=None), ValueError, "kind must be declared"),
    ("flowmap-grid-increasing", "a flow-map grid from data to noise",
     lambda d: pfd.adapters.FlowMapStudent(lambda x, t, s: x, grid=[0.0, 1.0]), ValueError, "grid must be"),
    ("vp-unknown-prediction", "prediction = 'eps' (the diffusers name is 'epsilon')",
     lambda d: pfd.adapters.VPDenoiser(lambda x, t: x, [0.9, 0.5], "eps"), ValueError, "prediction must be one of"),
    ("canonical-noise-n-0", "canonical_noise(0, ...)", lambda d: pfd.canonical_noise(0, (2,)), ValueError, "n must be >= 1"),
    ("write-json-missing-folder", "a result path in a missing folder",
     lambda d: pfd.report.write_json(d / "missing" / "r.json", {}), ValueError, "path: folder"),
    ("write-json-path-is-folder", "a result path that is a folder", lambda d: pfd.report.write_json(d, {"a": 1}),
     ValueError, "is a folder, expected a file name"),
    ("monitor-log-folder-missing", "a PFDMonitor log in a missing folder",
     lambda d: pfd.PFDMonitor(m2(), n=4, log_path=d / "missing" / "log.jsonl"), ValueError, "log_path: folder"),
    pytest.param(("monitor-log-not-writable", "a PFDMonitor log in a read-only folder (/sys)",
                  lambda d: pfd.PFDMonitor(m2(), n=4, log_path="/sys/pfd-log.jsonl"), ValueError,
                  "log_path: '/sys/pfd-log.jsonl' is not writable"), marks=RO, id="monitor-log-not-writable"),
    ("monitor-log-is-folder", "a PFDMonitor log path that is a folder", lambda d: pfd.PFDMonitor(m2(), n=4, log_path=d),
     ValueError, "log_path:"),
    ("spec-unimportable", "load_map of a module that does not exist",
     lambda d: load_map("no_such_user_module:make", label="student"), ValueError, "student: cannot import module"),
    ("spec-corrupt-torchscript", "load_map of a corrupt TorchScript file",
     lambda d: load_map(str(d / "corrupt.pt"), adapter="one-step", label="student"), ValueError,
     "is not a loadable TorchScript file"),
    ("spec-unknown-adapter", "adapter = 'epsilon'", lambda d: load_map("gmm:x.json", adapter="epsilon"), ValueError,
     "adapter type must be one of"),
    ("spec-device-bogus", "device = 'tpu'", lambda d: load_map(f"gmm:{d / 'teacher.json'}", device="tpu"), ValueError,
     "device must be 'cpu' or 'cuda'"),
    pytest.param(("spec-device-cuda-absent", "device = 'cuda' on a machine without CUDA",
                  lambda d: load_map(f"gmm:{d / 'teacher.json'}", device="cuda"), ValueError, "CUDA is not available"),
                 marks=pytest.mark.skipif(HAS_CUDA, reason="CUDA is present"), id="spec-device-cuda-absent"),
    ("spec-schedule-unknown-key", "a schedule key the adapter does not take",
     lambda d: load_map("torch.nn:Identity", adapter="one-step", schedule={"sigma_max": 80}), ValueError,
     "do not apply to adapter type 'one-step'"),
    ("spec-flow-map-no-grid", "a flow-map student without its grid",
     lambda d: load_map("torch.nn:Identity", adapter="flow-map"), ValueError, "needs its time grid"),
    ("spec-score-no-process", "a score model without its forward process",
     lambda d: load_map("torch.nn:Identity", adapter="score"), ValueError, "forward process"),
    ("spec-gmm-non-psd-file", "a mixture JSON with a non-PSD covariance",
     lambda d: load_map(f"gmm:{d / 'nonpsd.json'}"), ValueError, "is not a valid mixture: covs must be positive semi-definite"),
    # second audit (issue 14)
    ("distance-map-returns-int64", "a map that returns integers (int64)",
     lambda d: pfd.distance(lambda z: (10 * z).long(), lambda z: z, n=4, shape=(2,), progress=False), TypeError,
     "map a must return a real floating-point tensor, got torch.int64"),
    ("distance-map-returns-complex", "a map that returns a complex tensor",
     lambda d: pfd.distance(lambda z: z.to(torch.complex128), lambda z: z, n=4, shape=(2,), progress=False), TypeError,
     "map a must return a real floating-point tensor, got torch.complex128"),
    ("distance-map-returns-meta", "a map that returns a meta tensor (no values)",
     lambda d: pfd.distance(lambda z: z, lambda z: torch.empty(z.shape, device="meta"), n=4, shape=(2,), progress=False),
     ValueError, "map b returned a meta tensor"),
    ("map-denoiser-returns-int64", "a denoiser that returns integers",
     lambda d: pfd.DiffusionMap(lambda x, s: x.long(), shape=(2,), steps=2)(torch.zeros(3, 2)), TypeError,
     "must return a real floating-point tensor, got torch.int64"),
    ("distance-descriptor-nonfinite", "a descriptor returning NaN for some samples",
     lambda d: pfd.distance(lambda z: z, lambda z: 2 * z, n=8, shape=(2,), progress=False,
                            descriptor=lambda x: torch.where(x[:, :1] > 0, x.log(), x)),
     pfd.NonFiniteError, "descriptor (on the outputs of map a) returned non-finite values"),
    ("distance-descriptor-numpy", "a descriptor returning a numpy array",
     lambda d: pfd.distance(lambda z: z, lambda z: z, n=4, shape=(2,), descriptor=lambda x: x.numpy(), progress=False),
     TypeError, "descriptor must return a torch.Tensor, got a numpy array"),
    ("map-rtol-below-float64", "rtol = 1e-30 for dopri5", lambda d: pfd.DiffusionMap(G2.denoiser, solver="dopri5", rtol=1e-30),
     ValueError, "rtol=1e-30 is below what float64 can deliver"),
    ("map-atol-below-float64", "atol = 1e-30 for dopri5", lambda d: pfd.DiffusionMap(G2.denoiser, solver="dopri5", atol=1e-30),
     ValueError, "atol=1e-30 is below what float64 can deliver"),
    ("map-max-nfe-fixed-grid", "max_nfe for a fixed-grid solver", lambda d: pfd.DiffusionMap(G2.denoiser, max_nfe=100),
     ValueError, "rtol/atol apply to adaptive solvers only (and so does max_nfe)"),
    ("map-adaptive-runaway", "dopri5 on a noisy (non-smooth) denoiser",
     lambda d: pfd.DiffusionMap(_noisy_denoiser(), shape=(2,), solver="dopri5", max_nfe=300, progress=False)(torch.zeros(2, 2)),
     pfd.SolveBudgetError, "stopped after max_nfe=300 model evaluations"),
    ("monitor-cache-dir-missing", "a PFDMonitor cache_dir that does not exist",
     lambda d: pfd.PFDMonitor(m2(), n=4, cache_dir=d / "missing"), ValueError, "cache_dir: folder"),
    pytest.param(("monitor-cache-dir-not-writable", "a PFDMonitor cache_dir in a read-only place (/sys)",
                  lambda d: pfd.PFDMonitor(m2(), n=4, cache_dir="/sys"), ValueError,
                  "cache_dir: folder '/sys' is not writable"), marks=RO, id="monitor-cache-dir-not-writable"),
    pytest.param(("mtog-out-not-writable", "an mtog sweep file in a read-only place (/sys)",
                  lambda d: pfd.analysis.mtog_scaling(G2, [4], [4], out="/sys/runs.jsonl"), ValueError,
                  "out: '/sys/runs.jsonl' is not writable"), marks=RO, id="mtog-out-not-writable"),
    ("spec-schedule-broken-json", "a schedule value meant as a list but broken: grid=[80,1",
     lambda d: pfd.spec.parse_assignments(["grid=[80,1"], "--student-schedule"), ValueError,
     "--student-schedule grid=[80,1: the value is not valid JSON"),
    ("distance-conditional-without-labels", "a conditional map scored without labels",
     lambda d: pfd.distance(CG2.ode_map(steps=4), CG2.ode_map(steps=4), n=4, progress=False), ValueError,
     "map a is conditional"),
    ("distance-labels-unconditional-maps", "labels= for two unconditional maps",
     lambda d: pfd.distance(m2(), m2(), n=4, labels=2, progress=False), ValueError, "neither map is conditional"),
    ("distance-labels-wrong-rows", "explicit labels with another number of rows than n",
     lambda d: pfd.distance(CG2.ode_map(steps=4), m2(), n=4, labels=torch.zeros(3, dtype=torch.long), progress=False),
     ValueError, "one label per noise row"),
    ("distance-label-probs-not-normalised", "class probabilities that do not sum to 1",
     lambda d: pfd.distance(CG2.ode_map(steps=4), m2(), n=4, labels=[0.5, 0.6], progress=False), ValueError, "sum to 1"),
    ("distance-by-label-embeddings", "by_label=True with embedding labels",
     lambda d: pfd.distance(CG2.ode_map(steps=4), m2(), n=4, labels=torch.zeros(4, 3), by_label=True, progress=False),
     ValueError, "by_label=True needs class-id labels"),
    ("conditional-guidance-without-labels", "a guided denoiser asked without labels",
     lambda d: CG2.denoiser(torch.zeros(2, 2), 1.0, guidance=2.0), ValueError, "guidance needs labels"),
    ("adapter-guidance-without-null", "guidance for an adapter without a null condition",
     lambda d: pfd.adapters.EDMDenoiser(lambda x, s, c: x, condition="c", guidance=1.0), ValueError, "null_condition"),
]


def _case(c):
    return c.values[0] if hasattr(c, "marks") else c  # a pytest.param(...) wraps the case tuple


def _case_id(c):
    return _case(c)[0]


@pytest.mark.parametrize("case", API_CASES, ids=[_case_id(c) for c in API_CASES])
def test_api_rejects(case, user_dir):
    _, _, call, exc_type, text = _case(case)
    with pytest.raises(exc_type) as info:
        call(user_dir)
    assert text in str(info.value), str(info.value)
    assert type(info.value).__module__ in ("builtins", "pfd._checks"), type(info.value)  # not a torch-internal error


def test_nonfinite_output_names_indices_and_sigma():
    from _score_models import BrokenAtSmallSigma

    with pytest.raises(pfd.NonFiniteError) as info:  # NaN for row 1 of each batch below sigma = 1
        pfd.distance(pfd.DiffusionMap(BrokenAtSmallSigma(), steps=6), m2(6), n=6, batch_size=3, progress=False)
    err = info.value
    first_below_1 = float(next(s for s in pfd.karras_sigmas(6, 0.002, 80.0, 7.0) if s < 1.0))
    assert err.indices == [1] and err.sigma == pytest.approx(first_below_1, rel=1e-12)
    assert "non-finite" in str(err) and f"sigma={err.sigma:.6g}" in str(err) and "indices [1]" in str(err)


def test_nonfinite_indices_are_global_noise_indices():
    z = pfd.canonical_noise(256, (2,), seed=0)
    bad = torch.nonzero(z[:, 0] > 2.1).flatten()
    first_batch = int(bad[0]) // 64
    expected = [int(i) for i in bad if int(i) // 64 == first_batch]
    student = pfd.OneStepMap(lambda z: torch.where(z[:, :1] > 2.1, float("inf"), z), shape=(2,))
    with pytest.raises(pfd.NonFiniteError) as info:
        pfd.distance(pfd.OneStepMap(lambda z: z, shape=(2,)), student, n=256, batch_size=64, progress=False)
    assert info.value.indices == expected and first_batch > 0 and info.value.sigma is None


class _Dropout(torch.nn.Module):
    """A one-step student with dropout: evaluated in training mode it would be random."""

    def __init__(self, fail: bool = False):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2).double()
        self.drop = torch.nn.Dropout(0.5)
        self.fail = fail

    def forward(self, z):
        out = self.drop(self.lin(z))
        return out * float("nan") if self.fail else out


def test_model_in_training_mode_is_evaluated_in_eval_mode_and_returned_in_training_mode():
    net = _Dropout()
    net.train()
    res = pfd.distance(m2(), pfd.OneStepMap(net, shape=(2,)), n=64, progress=False)
    assert net.training and net.drop.training and net.lin.training
    net.eval()
    ref = pfd.distance(m2(), pfd.OneStepMap(net, shape=(2,)), n=64, progress=False)
    assert res.value == ref.value  # dropout was off during the evaluation
    assert not net.training  # an eval-mode model stays in eval mode
    bad = _Dropout(fail=True)
    bad.train()
    with pytest.raises(pfd.NonFiniteError):
        pfd.distance(m2(), pfd.OneStepMap(bad, shape=(2,)), n=8, progress=False)
    assert bad.training and bad.drop.training  # restored on error too


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "r.json"
    pfd.report.write_json(path, {"v": 1})

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        pfd.report.write_json(path, {"v": Unserialisable()})
    assert json.loads(path.read_text()) == {"v": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


# ------------------------------------------------------------------------------------------------ second audit
class _InPlaceReLU(torch.nn.Module):
    """A first layer that overwrites its input (nn.ReLU(inplace=True)), then a linear map."""

    def __init__(self):
        super().__init__()
        self.relu = torch.nn.ReLU(inplace=True)

    def forward(self, z):
        return 1.0 * self.relu(z)


def test_a_map_that_modifies_its_noise_in_place_does_not_change_what_the_other_map_sees():
    z = pfd.canonical_noise(256, (2,), seed=0).double()
    rms = float(z.pow(2).sum(1).mean().sqrt())
    ident = pfd.OneStepMap(lambda x: x, shape=(2,))
    triple = pfd.OneStepMap(lambda x: x.mul_(3), shape=(2,))
    for a, b in ((triple, ident), (ident, triple)):  # z -> 3z against z: 2 RMS||z|| whichever map runs first
        assert pfd.distance(a, b, n=256, progress=False).value == pytest.approx(2 * rms, rel=1e-12)
    relu = pfd.OneStepMap(_InPlaceReLU(), shape=(2,))
    assert pfd.distance(relu, ident, n=256, progress=False).value == pfd.distance(ident, relu, n=256, progress=False).value
    exact = float((z - z.clamp_min(0)).pow(2).sum(1).mean().sqrt())
    assert pfd.distance(relu, ident, n=256, progress=False).value == pytest.approx(exact, rel=1e-12)
    # the solver state is private too: a denoiser that zeroes its input gives the clean denoiser's map
    def vandal(x, s):
        out = G2.denoiser(x, s)
        x.zero_()
        return out
    dirty = pfd.DiffusionMap(vandal, shape=(2,), steps=6)
    assert pfd.distance(dirty, m2(6), n=64, progress=False).value == 0.0
    # ... also through an adapter, a CachedMap reference bank and the torchmetrics metric
    edm = pfd.DiffusionMap(pfd.adapters.EDMDenoiser(lambda x, sigma: vandal(x, sigma)), shape=(2,), steps=6)
    assert pfd.distance(edm, m2(6), n=64, progress=False).value == 0.0
    mon = pfd.PFDMonitor(pfd.OneStepMap(lambda x: x.mul_(3), shape=(2,)), n=64, every=1)
    assert mon.evaluate(triple, 0)["pfd"] == 0.0 and torch.equal(mon.bank.noise, pfd.canonical_noise(64, (2,), seed=0))
    from pfd.integrations.metric import PFDMetric

    metric = PFDMetric(m2(6), n=64)
    metric.update(pfd.OneStepMap(lambda x: x.mul_(0), shape=(2,)))
    assert torch.equal(metric.bank.noise, pfd.canonical_noise(64, (2,), seed=0))
    bv = pfd.bias_variance([triple, ident], ident, n=256)  # mean map 2z: plug-in E_bias^2 = E_var = E||z||^2
    assert bv.bias2_plugin == pytest.approx(rms**2, rel=1e-12) and bv.var_plugin == pytest.approx(rms**2, rel=1e-12)


def test_adaptive_steps_and_small_n_warn_and_numpy_integers_are_accepted():
    with pytest.warns(UserWarning, match="steps=8 is ignored: dopri5 is an adaptive solver"):
        pfd.DiffusionMap(G2.denoiser, solver="dopri5", steps=8)
    with pytest.warns(UserWarning, match="n=2 samples: the 95% CI .* is not meaningful below n=30"):
        pfd.distance(m2(), m2(), n=2, progress=False)
    res = pfd.distance(m2(np.int64(4)), m2(), n=np.int64(64), batch_size=np.int32(7), seed=np.uint8(3), progress=False)
    assert res.n == 64 and type(res.n) is int
    assert res.value == pfd.distance(m2(4), m2(), n=64, batch_size=64, seed=3, progress=False).value
    mon = pfd.PFDMonitor(m2(), n=np.int64(32), every=np.int16(5), batch_size=np.int64(8))
    assert mon.maybe_evaluate(m2(3), np.int64(10))["step"] == 10
    assert pfd.canonical_noise(np.int64(3), (np.int64(2),)).shape == (3, 2)


def test_a_long_adaptive_solve_shows_its_progress_unless_progress_is_off(monkeypatch, capsys):
    monkeypatch.setattr(pfd.maps, "SOLVE_BAR_DELAY", 0.0)  # as if the solve took longer than 2 s
    ref = G2.ode_map(solver="dopri5")
    pfd.distance(ref, m2(), n=8, progress=True)
    assert "dopri5 solve (log sigma" in capsys.readouterr().err
    pfd.distance(ref, m2(), n=8, progress=False)
    assert "dopri5 solve" not in capsys.readouterr().err


def test_gmm_weights_are_normalised_as_documented():
    """Weights need not sum to 1: they are divided by their sum (documented), exactly like a normalised mixture."""
    a = pfd.GaussianMixture([2.0, 2.0], [[-1.0, 0.0], [1.0, 0.0]], [0.1, 0.1])
    assert a.weights.tolist() == [0.5, 0.5] and a.to_dict()["weights"] == [0.5, 0.5]
    assert pfd.distance(a.ode_map(steps=4), m2(4), n=64, progress=False).value == 0.0
    assert "normalised to sum to one" in pfd.GaussianMixture.__doc__


def test_bit_identity_covers_double_precision_maps_on_fixed_grids_only():
    """README's guarantee, exactly: float64 maps with a fixed-grid solver give the same bits for every batch
    size; a float32 network does not (BLAS picks kernels by batch shape) but agrees to ~1e-9 relative."""
    torch.manual_seed(0)
    net64 = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2)).double()
    den64 = pfd.adapters.EDMDenoiser(lambda x, sigma: x + 0.1 * net64(x))
    for student in (pfd.OneStepMap(net64, shape=(2,)), pfd.DiffusionMap(den64, shape=(2,), steps=5, solver="heun"),
                    pfd.DiffusionMap(den64, shape=(2,), steps=5, solver="dpm3m")):
        vals = {pfd.distance(m2(5), student, n=100, batch_size=bs, progress=False).value for bs in (1, 7, 64, 100)}
        assert len(vals) == 1, vals
    net32 = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))
    vals32 = [pfd.distance(m2(5), pfd.OneStepMap(net32, shape=(2,)), n=100, batch_size=bs, progress=False).value
              for bs in (1, 7, 64, 100)]
    assert max(vals32) - min(vals32) <= 1e-6 * max(vals32)


def _tiny_config(**kw):
    return pfd.analysis.TrainConfig(**{"width": 8, "depth": 1, "train_steps": 3, "n_eval": 32, "lr": 2e-3,
                                       "solver": pfd.solvers.SolverSettings(steps=3), "progress": False, **kw})


def _tiny_dynamics(folder, epochs=1, **kw):
    from pfd.analysis.dynamics import training_dynamics

    return training_dynamics(G2, 8, epochs=epochs, eval_every=1, n_heldout=16, checkpoint=folder / "dynamics.pt",
                             config=_tiny_config(**kw))


def test_dynamics_checkpoint_is_keyed_by_its_settings(tmp_path):
    first = _tiny_dynamics(tmp_path)
    again = _tiny_dynamics(tmp_path)  # same settings: resumed, nothing recomputed
    assert again["rows"] == first["rows"]
    more = _tiny_dynamics(tmp_path, epochs=2)  # more epochs continue the same run
    assert more["rows"][:2] == first["rows"] and [r["epoch"] for r in more["rows"]] == [0, 1, 2]
    with pytest.raises(ValueError, match=r"was made with other settings \(lr: 0.002 stored, 0.001 now\)"):
        _tiny_dynamics(tmp_path, epochs=2, lr=1e-3)
    with pytest.raises(ValueError, match="n_eval: 32 stored, 64 now"):
        _tiny_dynamics(tmp_path, epochs=2, n_eval=64)
    with pytest.raises(ValueError, match="is at epoch 2, beyond epochs=1"):
        _tiny_dynamics(tmp_path, epochs=1)
    data = (tmp_path / "dynamics.pt").read_bytes()
    (tmp_path / "dynamics.pt").write_bytes(data[: len(data) // 2])  # a copy interrupted half-way
    with pytest.raises(ValueError, match="dynamics.pt' cannot be read .* truncated or not a pfd checkpoint"):
        _tiny_dynamics(tmp_path, epochs=2)


def test_fair_sweep_unit_checkpoint_survives_a_wall_stop_and_a_truncated_one_is_refused(tmp_path):
    from pfd.analysis.mtog import mtog_sweep

    # (continuing bit for bit is tested in test_mtog_digits.py; here the cap is out of reach, so the 1 s wall stops it)
    kw = {"train": {"max_steps": 10**6, "min_steps": 10**6, "check_every": 20, "n_check": 32}, "n_eval": 16,
          "progress": False, "n_boot": 2}
    res = mtog_sweep("digits", [8], ["mlp:4:1"], [0], out=tmp_path / "r.jsonl", wall_budget=0.0, **kw)
    assert res["pending"] == ["mlp:4:1"] and res["runs"] == [] and not res["complete"]
    (ckpt,) = (tmp_path / "r_ckpt").glob("unit-mlp-4-1-*.pt")
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # a crash mid-copy
    with pytest.raises(ValueError, match=r"ensemble checkpoint .*unit-mlp-4-1-.*cannot be read .*delete it to start over"):
        mtog_sweep("digits", [8], ["mlp:4:1"], [0], out=tmp_path / "r.jsonl", wall_budget=0.0, **kw)


def test_mtog_reruns_never_mix_settings_and_a_failed_run_does_not_stop_the_sweep(tmp_path, monkeypatch):
    import pfd.analysis.mtog as mtog

    out = tmp_path / "runs.jsonl"
    first = mtog.mtog_scaling(G2, [4, 8], [4], out=out, config=_tiny_config())
    assert [r["steps"] for r in first["runs"]] == [3, 3] and first["failed_runs"] == []
    assert mtog.mtog_scaling(G2, [4, 8], [4], out=out, config=_tiny_config())["runs"] == first["runs"]  # reused
    assert len(out.read_text().splitlines()) == 2
    with pytest.warns(UserWarning, match=r"set aside 2 run\(s\) made with other settings \(train_steps: 3 stored, 5 now\)"):
        other = mtog.mtog_scaling(G2, [4, 8], [4], out=out, config=_tiny_config(train_steps=5))
    assert [r["steps"] for r in other["runs"]] == [5, 5] and other["config"]["settings_key"] != first["config"]["settings_key"]
    assert len(out.read_text().splitlines()) == 4  # both settings kept apart in the file

    real = mtog.train_student

    def diverging(teacher, n, cfg, **k):
        if n == 8:
            raise pfd.NonFiniteError([0, 1], 80.0, "denoiser of a diverged student")
        return real(teacher, n, cfg, **k)

    monkeypatch.setattr(mtog, "train_student", diverging)
    with pytest.warns(UserWarning, match="mtog run N=8, width=4, seed=0 failed .* recorded as failed"):
        res = mtog.mtog_scaling(G2, [4, 8, 16], [4], out=out, config=_tiny_config(train_steps=4))
    assert [r["n_train"] for r in res["runs"]] == [4, 16]
    assert res["failed_runs"] == [{"n_train": 8, "width": 4, "seed": 0,
                                   "error": "NonFiniteError: denoiser of a diverged student returned non-finite values "
                                            "(NaN or inf) at sigma=80 for 2 sample(s): indices [0, 1]"}]


def test_score_out_never_overwrites_an_input(user_dir, monkeypatch, capsys):
    monkeypatch.chdir(user_dir)
    monkeypatch.syspath_prepend(str(user_dir))
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 2)).double())
    torch.jit.save(scripted, str(user_dir / "student_ts.pt"))
    try:
        for argv, victim in [(["--student", "student_ts.pt", *ONE, "--out", "student_ts.pt"], "student_ts.pt"),
                             (["--student", "user_models.py:student", *ONE, "--out", "./user_models.py"], "user_models.py"),
                             (["--student", "gmm:teacher.json", "--out", str(user_dir / "teacher.json")], "teacher.json")]:
            before = (user_dir / victim).read_bytes()
            rc, _out, err = run_cli([*BASE, *argv], capsys)
            assert rc == 2 and "is one of the" in err and "model's files" in err, err
            assert (user_dir / victim).read_bytes() == before
    finally:
        (user_dir / "student_ts.pt").unlink()


def _monitor(log, **kw):
    return pfd.PFDMonitor(m2(4), n=32, every=10, log_path=log, **kw)


def test_monitor_resume_continues_the_log_from_the_checkpoint(tmp_path):
    log = tmp_path / "pfd.jsonl"
    a = _monitor(log)
    for step in range(0, 80, 10):
        a.maybe_evaluate(m2(3), step)
        if step == 50:
            ckpt = a.state_dict()  # the checkpoint; the run goes on to step 70, then crashes
    assert [r["step"] for r in read_log(log)] == list(range(0, 80, 10))
    b = _monitor(log)
    b.load_state_dict(ckpt)
    assert [r["step"] for r in read_log(log)] == [0, 10, 20, 30, 40, 50]  # steps after the checkpoint are redone
    for step in range(50, 100, 10):
        b.maybe_evaluate(m2(3), step)
    recs = read_log(log)
    assert [r["step"] for r in recs] == list(range(0, 100, 10)) and recs == b.history  # nothing lost or twice
    assert {r["run"] for r in recs} == {a.run_id} == {b.run_id}


def test_two_monitors_sharing_one_log_are_detected(tmp_path):
    log = tmp_path / "pfd.jsonl"
    a, b = _monitor(log), _monitor(log)
    a.evaluate(m2(3), 0)
    b.evaluate(m2(3), 0)
    with pytest.raises(ValueError, match="pfd.jsonl' is shared: after this monitor's record of step 0"):
        a.evaluate(m2(3), 10)
    script = textwrap.dedent(f"""
        import pfd
        gmm = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.1, 0.1])
        mon = pfd.PFDMonitor(gmm.ode_map(steps=4), n=32, every=10, log_path={str(tmp_path / 'two.jsonl')!r})
        mon.evaluate(gmm.ode_map(steps=3), 0)
    """)
    c = _monitor(tmp_path / "two.jsonl")
    c.evaluate(m2(3), 0)
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=300,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))  # another process writes to the same log
    with pytest.raises(ValueError, match="is shared"):
        c.evaluate(m2(3), 10)


@RO
@pytest.mark.parametrize("argv, path", [
    (["mtog", "--out-dir", "/sys", "--n-trains", "4", "--widths", "4", "--train-steps", "1"], "/sys/mtog_runs.jsonl"),
    (["dynamics", "--out-dir", "/sys", "--n-train", "4", "--width", "4", "--epochs", "1"], "/sys/dynamics.pt"),
    (["bias-variance", "--out-dir", "/sys", "--n-train", "4", "--k", "2", "--train-steps", "1"], "/sys/bias_variance.json"),
    (["demo", "--out", "/sys/demo.json", "--n", "8"], "/sys/demo.json"),
], ids=["mtog", "dynamics", "bias-variance", "demo"])
def test_long_commands_check_their_output_before_any_work(argv, path, capsys):
    import time as _time

    t0 = _time.perf_counter()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and f"{path!r} is not writable" in err and ".tmp" not in err, err
    assert _time.perf_counter() - t0 < 5  # refused before training


def test_written_files_respect_the_umask_and_keep_the_mode_they_replace(tmp_path):
    old = os.umask(0o027)
    try:
        pfd.report.write_json(tmp_path / "new.json", {"a": 1})
        pfd.report.append_jsonl(tmp_path / "new.jsonl", {"a": 1})
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640
        assert (tmp_path / "new.jsonl").stat().st_mode & 0o777 == 0o640
        os.chmod(tmp_path / "new.json", 0o604)
        pfd.report.write_json(tmp_path / "new.json", {"a": 2})  # replaced: keeps its mode
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o604
        assert json.loads((tmp_path / "new.json").read_text()) == {"a": 2}
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------------------------ pfd score
BASE = ["--reference", "gmm:teacher.json", "--n", "8", "--steps", "3", "--no-progress"]
ONE = ["--student-type", "one-step", "--shape", "2"]
# (id, bad input, argv after `pfd score`, text the one-line message must contain)
CLI_CASES = [
    ("cli-student-unimportable", "--student naming a module that cannot be imported",
     [*BASE, "--student", "no_such_user_module:make"], "--student: cannot import module 'no_such_user_module'"),
    ("cli-student-missing-function", "--student naming a function the module lacks",
     [*BASE, "--student", "user_models:nope"], "--student: 'user_models' has no attribute 'nope'"),
    ("cli-student-corrupt-torchscript", "--student a corrupt TorchScript file",
     [*BASE, "--student", "corrupt.pt", *ONE], "--student: 'corrupt.pt' is not a loadable TorchScript file"),
    ("cli-student-factory-raises", "a factory that raises",
     [*BASE, "--student", "user_models:raises"], "--student: the factory user_models:raises() raised RuntimeError"),
    ("cli-student-factory-not-a-model", "a factory that returns 42",
     [*BASE, "--student", "user_models:not_a_model"], "--student: the factory user_models:not_a_model must return a callable"),
    ("cli-student-arg-unexpected", "--student-arg the factory does not take",
     [*BASE, "--student", "user_models:student", "--student-arg", "depth=3", *ONE], "unexpected keyword argument 'depth'"),
    ("cli-student-arg-malformed", "--student-arg without '='",
     [*BASE, "--student", "user_models:student", "--student-arg", "width", *ONE], "--student-arg must be KEY=VALUE"),
    ("cli-not-a-spec", "--student 'model' (no ':' and no known suffix)", [*BASE, "--student", "model"],
     "--student: 'model' is not a SPEC"),
    ("cli-reference-missing-file", "--reference gmm: of a missing file",
     ["--reference", "gmm:nothere.json", "--student", "gmm:teacher.json"], "--reference: no such mixture file"),
    ("cli-reference-invalid-json", "--reference gmm: of a truncated JSON file",
     ["--reference", "gmm:broken.json", "--student", "gmm:teacher.json"], "--reference: 'broken.json' is not valid JSON"),
    ("cli-reference-non-psd", "--reference mixture with a non-PSD covariance",
     ["--reference", "gmm:nonpsd.json", "--student", "gmm:teacher.json"], "covs must be positive semi-definite"),
    ("cli-n-1", "--n 1", [*BASE, "--student", "gmm:teacher.json", "--n", "1"], "--n must be >= 2"),
    ("cli-seed-negative", "--seed -1", [*BASE, "--student", "gmm:teacher.json", "--seed", "-1"], "--seed must be >= 0"),
    ("cli-steps-1", "--steps 1", [*BASE, "--student", "gmm:teacher.json", "--steps", "1"], "--steps must be >= 2"),
    ("cli-batch-size-0", "--batch-size 0", [*BASE, "--student", "gmm:teacher.json", "--batch-size", "0"],
     "--batch-size must be >= 1"),
    ("cli-unknown-solver", "--solver rk45", [*BASE, "--student", "gmm:teacher.json", "--solver", "rk45"],
     "--solver: solver must be one of"),
    ("cli-device-bogus", "--device tpu", [*BASE, "--student", "gmm:teacher.json", "--device", "tpu"],
     "--device must be 'cpu' or 'cuda'"),
    pytest.param(("cli-device-cuda-absent", "--device cuda without CUDA",
                  [*BASE, "--student", "gmm:teacher.json", "--device", "cuda"], "--device 'cuda' requested but CUDA is not"),
                 marks=pytest.mark.skipif(HAS_CUDA, reason="CUDA is present"), id="cli-device-cuda-absent"),
    ("cli-out-folder-missing", "--out in a missing folder", [*BASE, "--student", "gmm:teacher.json", "--out", "no/r.json"],
     "--out: folder 'no' does not exist"),
    pytest.param(("cli-out-not-writable", "--out in a read-only folder (/sys)",
                  [*BASE, "--student", "gmm:teacher.json", "--out", "/sys/pfd-score.json"],
                  "--out: '/sys/pfd-score.json' is not writable"), marks=RO, id="cli-out-not-writable"),
    ("cli-out-is-folder", "--out naming a folder", [*BASE, "--student", "gmm:teacher.json", "--out", "."],
     "--out: '.' is a folder"),
    ("cli-schedule-unknown-key", "--student-schedule key the adapter does not take",
     [*BASE, "--student", "user_models:student", *ONE, "--student-schedule", "sigma_max=80"],
     "--student: schedule key(s) ['sigma_max'] do not apply to adapter type 'one-step'"),
    ("cli-flow-map-no-grid", "--student-type flow-map without grid=",
     [*BASE, "--student", "user_models:student", "--student-type", "flow-map", "--shape", "2"],
     "--student: a flow-map student needs its time grid"),
    ("cli-shapes-differ", "a 2-D reference and a 3-D student", [*BASE, "--student", "gmm:teacher3d.json"],
     "--reference and --student have different sample shapes: (2,) vs (3,)"),
    ("cli-student-wrong-output-shape", "a student that returns (B, 3) for (B, 2) noise",
     [*BASE, "--student", "user_models:wide", *ONE], "--student: OneStepMap user_models:wide returned shape (8, 3)"),
    ("cli-student-nonfinite", "a student denoiser returning NaN below sigma = 1",
     [*BASE, "--student", "user_models:broken", "--steps", "6"],
     "--student (denoiser of user_models:broken) returned non-finite"),
    ("cli-student-fails-inside-torch", "a student whose forward fails inside torch (wrong layer size)",
     [*BASE, "--student", "torch.nn:Linear", "--student-arg", "in_features=3", "--student-arg", "out_features=2", *ONE],
     "--student: the model raised RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
    ("cli-shape-missing", "two models that do not declare a shape, no --shape",
     ["--reference", "torch.nn:Identity", "--reference-type", "one-step", "--student", "torch.nn:Identity",
      "--student-type", "one-step", "--n", "8"], "--shape is required"),
    ("cli-shape-invalid", "--shape 0,2", [*BASE, "--student", "gmm:teacher.json", "--shape", "0,2"],
     "argument --shape: expected comma-separated positive integers"),
    ("cli-unknown-type", "--student-type epsilon", [*BASE, "--student", "gmm:teacher.json", "--student-type", "epsilon"],
     "argument --student-type: invalid choice: 'epsilon'"),
    ("cli-student-missing", "no --student", BASE, "the following arguments are required: --student"),
    ("cli-wrong-adapter-type", "a one-step generator declared as a flow map",
     [*BASE, "--student", "user_models:student", "--student-type", "flow-map", "--student-schedule", "grid=[80,0]",
      "--shape", "2"], "--student: Sequential.forward() takes 2 positional arguments but 4 were given"),
    ("cli-gmm-wrong-adapter", "--reference-type velocity for a gmm: SPEC",
     [*BASE, "--student", "gmm:teacher.json", "--reference-type", "velocity"],
     "--reference: a Gaussian mixture is an analytic denoiser; use adapter type 'denoiser'"),
    # second audit (issue 14)
    ("cli-out-is-reference-json", "--out naming the reference's mixture file",
     [*BASE, "--student", "gmm:teacher.json", "--out", "teacher.json"],
     "--out 'teacher.json' is one of the reference model's files"),
    ("cli-out-is-student-factory", "--out naming the student's factory .py file",
     [*BASE, "--student", "user_models.py:student", *ONE, "--out", "user_models.py"],
     "--out 'user_models.py' is one of the student model's files"),
    ("cli-out-is-student-module", "--out naming the file of the student's dotted module",
     [*BASE, "--student", "user_models:student", *ONE, "--out", "user_models.py"],
     "--out 'user_models.py' is one of the student model's files"),
    ("cli-shape-mismatch", "--shape 3 for models declaring (2,)", [*BASE, "--student", "gmm:teacher.json", "--shape", "3"],
     "does not match the mixture's sample shape (2,)"),
    ("cli-adaptive-steps", "--solver dopri5 with --steps 3 (steps only apply to fixed grids)",
     [*BASE, "--student", "gmm:teacher.json", "--solver", "dopri5"],
     "--steps 3 does not apply to --solver dopri5"),
    ("cli-student-arg-float-for-int", "--student-arg width=1e1 (a float where the factory needs an int)",
     [*BASE, "--student", "user_models:student", "--student-arg", "width=1e1", *ONE],
     "width=10.0 (a float; write width=10 if an int is meant)"),
    ("cli-schedule-broken-json", "--student-schedule grid=[80,1 (unclosed list)",
     [*BASE, "--student", "user_models:student", "--student-type", "flow-map", "--student-schedule", "grid=[80,1",
      "--shape", "2"], "--student-schedule grid=[80,1: the value is not valid JSON"),
]


def run_cli(argv, capsys):
    try:
        rc = main(["score", *argv])
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("case", CLI_CASES, ids=[_case_id(c) for c in CLI_CASES])
def test_cli_rejects(case, user_dir, monkeypatch, capsys):
    _, _, argv, text = _case(case)
    monkeypatch.chdir(user_dir)
    monkeypatch.syspath_prepend(str(user_dir))
    before = set(os.listdir(user_dir))
    out_given = "--out" in argv
    argv = argv if out_given else [*argv, "--out", "result.json"]
    rc, out, err = run_cli(argv, capsys)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pfd score: error: "), err
    assert "Traceback" not in err and text in lines[0], lines[0]
    assert set(os.listdir(user_dir)) == before  # no (partial or temporary) output file left behind


def test_cli_failures_in_a_real_process(user_dir):
    """The same contract from a subprocess: exit code 2, one line on stderr, no traceback, no output file."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(user_dir), str(ROOT)]))
    for argv, text in [(["--student", "corrupt.pt", *ONE], "not a loadable TorchScript file"),
                       (["--student", "user_models:broken", "--steps", "6"], "returned non-finite values")]:
        out = subprocess.run([sys.executable, "-m", "pfd.cli", "score", *BASE, *argv, "--out", "x.json"], cwd=user_dir,
                             env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and out.stdout == "", out
        assert len(out.stderr.strip().splitlines()) == 1 and text in out.stderr and "Traceback" not in out.stderr
        assert not (user_dir / "x.json").exists()


# ------------------------------------------------------------------------------------------------ the docs table
def test_table_matches_tests():
    """docs/reliability.md lists exactly the cases tested here, at least 25, each with a test id that exists."""
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| bad input")]
    ids = [re.fullmatch(r"`(test_[a-z_]+(?:\[[a-z0-9-]+\])?)`", row.rstrip(" |").rsplit("| ", 1)[1].strip()).group(1)
           for row in rows]
    expected = {f"test_api_rejects[{_case_id(c)}]" for c in API_CASES}
    expected |= {f"test_cli_rejects[{_case_id(c)}]" for c in CLI_CASES}
    expected |= {name for name in globals() if name.startswith("test_") and name not in
                 ("test_api_rejects", "test_cli_rejects", "test_table_matches_tests")}
    assert set(ids) == expected, (set(ids) ^ expected)
    assert len(ids) == len(set(ids)) >= 25
