"""PFDMonitor and NoiseBank: cached reference, cost, eval mode, JSONL log, crash safety, resume."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import pfd
from pfd.monitor import NoiseBank, read_log, reference_identity

ROOT = Path(__file__).resolve().parents[1]


def _mixtures(k=8, d=8, scale=1.05):
    g = torch.Generator().manual_seed(0)
    means = torch.randn(k, d, generator=g, dtype=torch.float64)
    w = torch.full((k,), 1.0 / k, dtype=torch.float64)
    return pfd.GaussianMixture(w, means, torch.full((k,), 0.1)), pfd.GaussianMixture(w, scale * means, torch.full((k,), 0.1))


class Counting:
    """A denoiser wrapper that counts calls (to prove what the monitor evaluates)."""

    def __init__(self, gmm):
        self.gmm, self.calls = gmm, 0
        self.event_shape = gmm.event_shape

    def to_dict(self):  # content identity for the disk cache key
        return self.gmm.to_dict()

    def __call__(self, x, sigma):
        self.calls += 1
        return self.gmm.denoiser(x, sigma)


def test_monitor_value_equals_direct_distance_and_reference_runs_once(two_modes):
    other = pfd.GaussianMixture([0.5, 0.5], [[-1.2, 0.5], [1.3, -0.4]], [0.2, 0.15])
    den = Counting(two_modes)
    ref = pfd.DiffusionMap(den, steps=8, shape=(2,))
    mon = pfd.PFDMonitor(ref, n=300, seed=3, every=1, batch_size=128)
    direct = pfd.distance(two_modes.ode_map(steps=8), other.ode_map(steps=8), n=300, seed=3, progress=False)
    r0 = mon.evaluate(other.ode_map(steps=8), 0)
    calls_after_first = den.calls
    assert calls_after_first == 3 * 15  # 3 batches x (7 Heun steps x 2 + final denoise)
    r1 = mon.evaluate(other.ode_map(steps=8), 1)
    assert den.calls == calls_after_first  # later evaluations never touch the reference
    assert r0["pfd"] == r1["pfd"] == direct.value  # bit-identical to the plain estimator
    assert r0["stderr"] == direct.stderr and r0["ci95"] == list(direct.ci95)
    assert r0["nfe"] == 15.0 and r0["reference_nfe"] == 15.0
    assert r0["reference_seconds"] > 0 and r1["reference_seconds"] == 0


def test_second_call_costs_only_the_student(one_thread):
    """Both maps cost the same: a monitored evaluation must be >= 1.8x cheaper than recomputing both."""
    t, s = _mixtures(k=128, d=16)
    mon = pfd.PFDMonitor(t.ode_map(), n=1024, every=1)
    mon.evaluate(s.ode_map(), 0)  # builds the bank
    ratios = []
    for i in range(5):  # CPU time of this process (robust to other load), paired back-to-back runs
        c0 = time.process_time()
        rec = mon.evaluate(s.ode_map(), i + 1)
        cached = time.process_time() - c0
        c0 = time.process_time()
        res = pfd.distance(t.ode_map(), s.ode_map(), n=1024, progress=False)
        full = time.process_time() - c0
        assert rec["pfd"] == res.value
        ratios.append(full / cached)
    assert sorted(ratios)[2] >= 1.8, ratios  # median of the paired ratios


def test_student_eval_mode_no_grad_and_mode_restored():
    seen = []

    class Gen(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2).double()
            self.drop = torch.nn.Dropout(0.5)

        def forward(self, z):
            seen.append((self.training, self.drop.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
            return self.drop(self.lin(z))

    gmm = pfd.GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    gen = Gen().train()
    mon = pfd.PFDMonitor(gmm.ode_map(steps=4), n=64, every=2)
    rec = mon.maybe_evaluate(gen, 4)
    assert seen and all(s == (False, False, False, True) for s in seen)
    assert gen.training and gen.drop.training and gen.lin.training
    # dropout off during evaluation: the value equals that of the deterministic map
    with torch.no_grad():
        direct = pfd.distance(gmm.ode_map(steps=4), lambda z: gen.lin(z), n=64, shape=(2,), progress=False)
    assert rec["pfd"] == direct.value
    # a pfd map wrapping a module is handled the same way
    gen.train()
    seen.clear()
    mon.evaluate(pfd.OneStepMap(gen, shape=(2,)), 6)
    assert seen[0][:2] == (False, False) and gen.training


def test_every_and_duplicates():
    gmm = pfd.GaussianMixture([1.0], [[0.0]], [1.0])
    mon = pfd.PFDMonitor(gmm.ode_map(steps=3), n=16, every=5)
    student = pfd.OneStepMap(lambda z: z, shape=(1,))
    got = [s for s in range(0, 16) if mon.maybe_evaluate(student, s) is not None]
    assert got == [0, 5, 10, 15]
    assert mon.maybe_evaluate(student, 10) is None  # already evaluated
    assert [h["step"] for h in mon.history] == [0, 5, 10, 15] and mon.last["step"] == 15


def test_jsonl_log_matches_history(tmp_path, two_modes):
    log = tmp_path / "pfd.jsonl"
    mon = pfd.PFDMonitor(two_modes.ode_map(steps=4), n=32, every=1, log_path=log)
    for step in range(3):
        mon.evaluate(two_modes.ode_map(steps=3 + step), step)
    recs = read_log(log)
    assert [r["step"] for r in recs] == [0, 1, 2]
    assert [r["pfd"] for r in recs] == [h["pfd"] for h in mon.history]
    assert recs[1]["pfd"] == 0.0 and recs[0]["pfd"] > 0 and recs[2]["pfd"] > 0  # step 1 used the reference's own map


def test_partial_last_line_is_skipped_and_repaired(tmp_path, two_modes):
    log = tmp_path / "pfd.jsonl"
    mon = pfd.PFDMonitor(two_modes.ode_map(steps=4), n=32, every=1, log_path=log)
    mon.evaluate(two_modes.ode_map(steps=3), 0)
    with open(log, "ab") as fh:  # what a kill in the middle of a write leaves behind
        fh.write(b'{"step": 1, "pfd": 0.12')
    assert [r["step"] for r in read_log(log)] == [0]
    mon.evaluate(two_modes.ode_map(steps=3), 2)  # the next append starts on a clean line
    lines = log.read_bytes().split(b"\n")
    assert lines[-1] == b"" and [json.loads(x)["step"] for x in lines[:-1]] == [0, 2]
    with open(log, "ab") as fh:  # a corrupt line in the middle is skipped with a warning
        fh.write(b"garbage\n" + json.dumps({"step": 3}).encode() + b"\n")
    with pytest.warns(RuntimeWarning, match="corrupt line 3"):
        assert [r["step"] for r in read_log(log)] == [0, 2, 3]


def test_process_killed_while_logging_leaves_readable_log(tmp_path):
    log = tmp_path / "pfd.jsonl"
    script = textwrap.dedent(f"""
        import sys, torch, pfd
        gmm = pfd.GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
        mon = pfd.PFDMonitor(gmm.ode_map(steps=3), n=16, every=1, log_path={str(log)!r})
        student = pfd.OneStepMap(lambda z: 0.9 * z, shape=(2,))
        step = 0
        while True:
            mon.evaluate(student, step)
            step += 1
            if step == 5:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    recs = read_log(log)
    assert len(recs) >= 5
    assert [r["step"] for r in recs] == list(range(len(recs)))
    assert len({r["pfd"] for r in recs}) == 1 and recs[0]["pfd"] > 0


def test_state_dict_resume_continues_the_curve(tmp_path, two_modes):
    def make():
        return pfd.PFDMonitor(two_modes.ode_map(steps=4), n=32, seed=1, every=10)

    a = make()
    for step in (0, 10):
        a.maybe_evaluate(two_modes.ode_map(steps=2 + step // 10), step)
    path = tmp_path / "ckpt.pt"
    torch.save({"monitor": a.state_dict()}, path)
    b = make()
    b.load_state_dict(torch.load(path, weights_only=True)["monitor"])
    assert b.maybe_evaluate(two_modes.ode_map(steps=3), 10) is None  # done before the checkpoint
    b.maybe_evaluate(two_modes.ode_map(steps=4), 20)
    assert [h["step"] for h in b.history] == [0, 10, 20]
    assert b.history[:2] == a.history and b.history[2]["pfd"] == 0.0
    other = pfd.PFDMonitor(two_modes.ode_map(steps=4), n=32, seed=2, every=10)
    with pytest.raises(ValueError, match="different n, seed"):
        other.load_state_dict(a.state_dict())
    with pytest.raises(TypeError, match="state must be a dict"):
        other.load_state_dict({"history": []})


def test_disk_cache_reuses_and_never_goes_stale(tmp_path):
    gmm = pfd.GaussianMixture([0.3, 0.7], [[-1.0, 0.0], [1.0, 0.5]], [0.1, 0.2])
    student = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], [0.1, 0.2]).ode_map(steps=5)

    def monitor(mix, **kw):
        den = Counting(mix)
        opts = {"steps": 5, **kw}
        return pfd.PFDMonitor(pfd.DiffusionMap(den, shape=(2,), name="teacher", **opts), n=40, every=1,
                              cache_dir=tmp_path), den

    m1, d1 = monitor(gmm)
    r1 = m1.evaluate(student, 0)
    files = list(tmp_path.glob("bank-*.pt"))
    assert len(files) == 1 and d1.calls > 0
    m2, d2 = monitor(gmm)  # a new process with the same reference: loads the bank, integrates nothing
    r2 = m2.evaluate(student, 0)
    assert d2.calls == 0 and m2.bank.loaded_from_disk and r2["pfd"] == r1["pfd"]
    # a different reference (model content, solver or steps) gets a different key and is recomputed
    moved = pfd.GaussianMixture([0.3, 0.7], [[-1.0, 0.0], [1.0, 0.6]], [0.1, 0.2])
    for mix, kw in ((moved, {}), (gmm, {"steps": 6}), (gmm, {"solver": "euler"})):
        m3, d3 = monitor(mix, **kw)
        r3 = m3.evaluate(student, 0)
        assert d3.calls > 0 and not m3.bank.loaded_from_disk and r3["pfd"] != r1["pfd"]
    assert len(list(tmp_path.glob("bank-*.pt"))) == 4
    # a file whose stored key does not match is ignored (e.g. a hash collision or a hand-copied file)
    blob = torch.load(files[0], weights_only=True)
    blob["key"] = blob["key"].replace('"n": 40', '"n": 41')
    torch.save(blob, files[0])
    m4, d4 = monitor(gmm)
    m4.evaluate(student, 0)
    assert d4.calls > 0 and not m4.bank.loaded_from_disk


def test_reference_identity_of_modules_and_plain_functions(tmp_path):
    net = torch.nn.Linear(2, 2).double()
    ref = pfd.OneStepMap(net, shape=(2,))
    a = reference_identity(ref)["content"]
    with torch.no_grad():
        net.weight[0, 0] += 1e-9
    assert reference_identity(ref)["content"] != a
    with pytest.raises(ValueError, match="reference_key"):
        pfd.PFDMonitor(pfd.OneStepMap(lambda z: z, shape=(2,)), n=8, cache_dir=tmp_path)
    mon = pfd.PFDMonitor(pfd.OneStepMap(lambda z: z, shape=(2,)), n=8, cache_dir=tmp_path, reference_key="identity-v1")
    assert "user:identity-v1" in mon.bank._key_text


def test_bank_map_falls_back_on_foreign_noise(two_modes):
    bank = NoiseBank(two_modes.ode_map(steps=4), n=16, seed=0)
    m = bank.as_map()
    z = pfd.canonical_noise(8, (2,), seed=9)
    assert torch.equal(m(z), two_modes.ode_map(steps=4)(z)) and m.misses == 1 and bank.computed_rows == 0
    zb = pfd.canonical_noise(5, (2,), seed=0, start=3)
    assert torch.equal(m(zb), two_modes.ode_map(steps=4)(zb)) and bank.computed_rows == 5
    assert torch.equal(m(zb), bank.outputs(3, 8)) and m.hits == 1
    shifted = zb.clone()
    shifted[-1, 0] += 1e-12  # same first row, different batch: not served from the bank
    assert bank.locate(shifted) is None


def test_bad_input(tmp_path, two_modes):
    ref = two_modes.ode_map(steps=3)
    with pytest.raises(ValueError, match="n must be >= 2"):
        pfd.PFDMonitor(ref, n=1)
    with pytest.raises(ValueError, match="every must be >= 1"):
        pfd.PFDMonitor(ref, n=8, every=0)
    with pytest.raises(TypeError, match="reference must be a callable"):
        pfd.PFDMonitor("teacher", n=8)
    with pytest.raises(ValueError, match="log_path: folder"):
        pfd.PFDMonitor(ref, n=8, log_path=tmp_path / "missing" / "log.jsonl")
    with pytest.raises(ValueError, match="cache_dir: folder"):
        pfd.PFDMonitor(ref, n=8, cache_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="shape= is required"):
        pfd.PFDMonitor(lambda z: z, n=8)
    with pytest.raises(ValueError, match=r"shape=\(3,\) does not match"):
        pfd.PFDMonitor(ref, n=8, shape=(3,))
    with pytest.raises(TypeError, match="reference_key must be"):
        pfd.PFDMonitor(ref, n=8, cache_dir=tmp_path, reference_key="")
    mon = pfd.PFDMonitor(ref, n=8)
    with pytest.raises(TypeError, match="student must be"):
        mon.evaluate(42, 0)
    with pytest.raises(TypeError, match="step must be an int"):
        mon.maybe_evaluate(ref, -1)
    with pytest.raises(ValueError, match="rows must satisfy"):
        mon.bank.outputs(0, 9)


def test_unreadable_cache_file_is_recomputed(tmp_path):
    gmm = pfd.GaussianMixture([1.0], [[0.5, -0.5]], [0.3])
    mon = pfd.PFDMonitor(gmm.ode_map(steps=4), n=16, cache_dir=tmp_path)
    mon.bank.cache_path.write_bytes(b"not a torch file")
    with pytest.warns(RuntimeWarning, match="unreadable bank cache"):
        rec = mon.evaluate(pfd.OneStepMap(lambda z: z, shape=(2,)), 0)
    assert not mon.bank.loaded_from_disk and mon.bank.complete
    direct = pfd.distance(gmm.ode_map(steps=4), lambda z: z, n=16, shape=(2,), progress=False)
    assert rec["pfd"] == direct.value
    again = pfd.PFDMonitor(gmm.ode_map(steps=4), n=16, cache_dir=tmp_path)  # the file was rewritten
    again.bank.prepare()
    assert again.bank.loaded_from_disk
