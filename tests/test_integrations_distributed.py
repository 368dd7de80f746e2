"""Distributed evaluation: torchrun --nproc_per_node=2 (gloo) gives the single-process PFD."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pfd
from pfd.estimator import ExactSum, shard_range

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _dist_worker as W  # noqa: E402

pytest.importorskip("torchmetrics")
from pfd.integrations.metric import PFDMetric  # noqa: E402


@pytest.fixture(scope="module")
def torchrun_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "_dist_worker.py"), str(out)]
    proc = subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def _single():
    _, _, teacher, student = W.setup()
    return teacher, student


def test_two_processes_give_the_single_process_value(torchrun_results):
    _, ranks = torchrun_results
    teacher, student = _single()
    ref = pfd.distance(teacher.ode_map(steps=6), student.ode_map(steps=6), n=W.N, seed=W.SEED,
                       batch_size=W.BATCH, progress=False, group=False)
    for r in ranks:
        d = r["distance"]
        assert r["world"] == 2 and d["world_size"] == 2
        assert d["value"] == ref.value  # bit-identical: exact partial sums merged across ranks
        assert d["stderr"] == ref.stderr and d["ci95"] == list(ref.ci95)
        assert d["nfe"] == list(ref.nfe) == [11.0, 11.0]


def test_monitor_under_torchrun(torchrun_results):
    out, ranks = torchrun_results
    teacher, student = _single()
    ref = pfd.distance(teacher.ode_map(steps=6), student.ode_map(steps=6), n=W.N, seed=W.SEED, progress=False)
    for r in ranks:
        assert r["monitor"]["pfd"] == [ref.value, ref.value]
        assert r["monitor"]["bank_rows"] == W.N  # every rank computed a shard and received the rest
        assert r["monitor"]["reference_seconds"][1] == 0.0
    lines = (out / "monitor.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 1]  # rank 0 alone writes the log


def test_metric_sum_reduction_across_two_ranks(torchrun_results):
    _, ranks = torchrun_results
    teacher, student = _single()
    metric = PFDMetric(teacher.ode_map(steps=6), n=W.N, seed=W.SEED, batch_size=W.BATCH)
    metric.update(student.ode_map(steps=6))
    single = float(metric.compute())
    assert [r["metric"]["shard"] for r in ranks] == [[0, 500], [500, W.N]]
    assert [r["metric"]["local_count"] for r in ranks] == [500.0, 501.0]
    for r in ranks:
        assert r["metric"]["n"] == W.N
        assert abs(r["metric"]["value"] - single) <= 1e-12 * single


def test_failure_on_one_rank_raises_on_every_rank(torchrun_results):
    _, ranks = torchrun_results
    lo_last = W.N // 2
    for r in ranks:
        assert r["error"] == {"type": "NonFiniteError", "indices": [lo_last + 3]}


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
def test_metric_states_merge_like_two_ranks(two_modes):
    """The sum states of two shards, merged (what dist_reduce_fx='sum' does), equal one metric."""
    other = pfd.GaussianMixture([0.5, 0.5], [[-1.2, 0.5], [1.3, -0.4]], [0.2, 0.15])
    n = 300
    one = PFDMetric(two_modes.ode_map(steps=5), n=n, seed=2, batch_size=64)
    one.update(other.ode_map(steps=5))
    single = float(one.compute())
    ref = pfd.distance(two_modes.ode_map(steps=5), other.ode_map(steps=5), n=n, seed=2, progress=False)
    assert abs(single - ref.value) <= 1e-13 * ref.value and one.details["nfe"] == 9.0
    # two "ranks" fed student outputs for their shards, in uneven chunks
    smap = other.ode_map(steps=5)
    parts = []
    for rank in range(2):
        m = PFDMetric(bank=one.bank)
        lo, hi = shard_range(n, rank, 2)
        for a in range(lo, hi, 37):
            b = min(hi, a + 37)
            m.update(smap(m.noise(a, b)), start=a)
        parts.append(m)
    parts[0].merge_state(parts[1])
    assert float(parts[0].count) == n
    assert abs(float(parts[0].compute()) - ref.value) <= 1e-12 * ref.value
    assert parts[0].details["nfe"] is None  # tensors carry no NFE
    # default start: consecutive tensor updates continue where the previous one stopped
    m = PFDMetric(bank=one.bank)
    for a in range(0, n, 100):
        m.update(smap(m.noise(a, a + 100)))
    assert abs(float(m.compute()) - ref.value) <= 1e-12 * ref.value
    m.reset()
    with pytest.raises(ValueError, match="at least 2"):
        m.compute()


def test_metric_bad_input(two_modes):
    m = PFDMetric(two_modes.ode_map(steps=3), n=16)
    with pytest.raises(ValueError, match="student outputs must have shape"):
        m.update(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="does not fit the bank"):
        m.update(torch.zeros(4, 2), start=14)
    with pytest.raises(ValueError, match="start= applies to tensors"):
        m.update(two_modes.ode_map(), start=0)
    with pytest.raises(TypeError, match="needs a reference"):
        PFDMetric()
    with pytest.raises(TypeError, match="bank must be"):
        PFDMetric(bank="bank")
    with pytest.raises(ValueError, match="not finite"):
        m.update(torch.full((2, 2), float("nan")), start=0)


def test_distance_group_errors_without_init():
    p = pfd.GaussianMixture([1.0], [[0.0]], [1.0])
    with pytest.raises(ValueError, match="not initialised"):
        pfd.distance(p.ode_map(steps=3), p.ode_map(steps=3), n=8, progress=False, group=object())
    # group=False is always a plain single-process evaluation
    a = pfd.distance(p.ode_map(steps=3), p.ode_map(steps=4), n=8, progress=False, group=False)
    b = pfd.distance(p.ode_map(steps=3), p.ode_map(steps=4), n=8, progress=False)
    assert a.value == b.value and a.provenance["world_size"] == 1


def test_exact_merge_of_shards_is_order_independent():
    """What the gather does: merging per-shard exact partials gives the correctly rounded total."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(5000, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-8, 8, (5000,), generator=g)).tolist()
    total = ExactSum(x).value
    for world in (2, 3, 7):
        merged = ExactSum()
        for rank in reversed(range(world)):
            lo, hi = shard_range(len(x), rank, world)
            merged.merge(ExactSum(ExactSum(x[lo:hi]).partials))
        assert merged.value == total
