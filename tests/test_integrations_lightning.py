"""The Lightning callback with a real lightning.Trainer (CPU, a few steps) and the lazy imports."""

import csv
import json
import subprocess
import sys

import pytest
import torch

import pfd

L = pytest.importorskip("lightning")
from pfd.integrations.lightning import PFDCallback  # noqa: E402

TEACHER = pfd.GaussianMixture([0.5, 0.5], [[-1.5, 0.0], [1.5, 0.5]], [0.05, 0.1])


def _pairs(n=256, seed=1):
    z = pfd.canonical_noise(n, (2,), seed=seed)
    return z.float(), TEACHER.ode_map(steps=8)(z).float()


class Distill(L.LightningModule):
    """A one-step generator G(z) regressed onto the teacher's noise-to-data pairs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.SiLU(), torch.nn.Linear(64, 2))

    def forward(self, z):
        return self.net(z)

    def training_step(self, batch, batch_idx):
        z, y = batch
        return (self(z) - y).pow(2).sum(1).mean()

    def validation_step(self, batch, batch_idx):
        z, y = batch
        self.log("val_loss", (self(z) - y).pow(2).sum(1).mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _loaders():
    z, y = _pairs()
    ds = torch.utils.data.TensorDataset(z, y)
    return (torch.utils.data.DataLoader(ds, batch_size=64, shuffle=False),
            torch.utils.data.DataLoader(ds, batch_size=256))


def _trainer(root, cb, epochs):
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, callbacks=[cb], default_root_dir=root,
                     logger=L.pytorch.loggers.CSVLogger(root, name="logs"), enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=1, enable_checkpointing=False)


def test_trainer_logs_pfd_each_validation_epoch_and_resumes(tmp_path):
    log = tmp_path / "pfd.jsonl"

    def callback():
        return PFDCallback(reference=TEACHER.ode_map(steps=8), n=256, seed=0, log_path=log, cache_dir=tmp_path)

    cb = callback()
    model = Distill()
    train, val = _loaders()
    trainer = _trainer(tmp_path / "a", cb, epochs=2)
    trainer.fit(model, train, val)
    hist = cb.monitor.history
    assert [h["step"] for h in hist] == [4, 8]  # sanity check skipped; 4 steps per epoch
    # the logged values are the monitor's values (float32 in Lightning's logger)
    assert float(trainer.callback_metrics["pfd/value"]) == pytest.approx(hist[-1]["pfd"], rel=1e-6)
    # ... and an independent computation of the student's PFD agrees
    direct = pfd.distance(TEACHER.ode_map(steps=8), pfd.OneStepMap(model.net, shape=(2,)), n=256, progress=False)
    assert hist[-1]["pfd"] == pytest.approx(direct.value, rel=1e-12)
    ckpt = tmp_path / "epoch2.ckpt"
    trainer.save_checkpoint(ckpt)

    cb2 = callback()
    trainer2 = _trainer(tmp_path / "a", cb2, epochs=4)
    trainer2.fit(Distill(), train, val, ckpt_path=ckpt)
    steps = [h["step"] for h in cb2.monitor.history]
    assert steps == [4, 8, 12, 16]
    assert cb2.monitor.history[:2] == hist  # the curve before the checkpoint survived the resume
    assert cb2.monitor.bank.loaded_from_disk  # the teacher was not integrated again
    assert cb2.monitor.history[-1]["pfd"] < hist[0]["pfd"]  # distillation makes progress
    # CSV logger: one pfd/value per validation epoch
    rows = []
    for f in sorted((tmp_path / "a").rglob("metrics.csv")):
        with open(f) as fh:
            rows += [r for r in csv.DictReader(fh) if r.get("pfd/value")]
    assert len(rows) == 4
    assert [float(r["pfd/value"]) for r in rows] == pytest.approx([h["pfd"] for h in cb2.monitor.history], rel=1e-6)
    # JSONL log: every evaluation once, in order
    assert [r["step"] for r in pfd.monitor.read_log(log)] == [4, 8, 12, 16]


def test_every_n_steps_mode(tmp_path):
    cb = PFDCallback(reference=TEACHER.ode_map(steps=4), n=64, every_n_steps=3)
    train, val = _loaders()
    trainer = _trainer(tmp_path, cb, epochs=2)
    trainer.fit(Distill(), train, val)
    assert [h["step"] for h in cb.monitor.history] == [3, 6]


def test_callback_bad_input():
    with pytest.raises(TypeError, match="needs monitor="):
        PFDCallback()
    mon = pfd.PFDMonitor(TEACHER.ode_map(steps=4), n=8)
    with pytest.raises(TypeError, match="not both"):
        PFDCallback(mon, reference=TEACHER.ode_map())
    with pytest.raises(ValueError, match="every_n_steps must be"):
        PFDCallback(mon, every_n_steps=0)
    with pytest.raises(TypeError, match="monitor must be"):
        PFDCallback("monitor")
    with pytest.raises(ValueError, match="prefix must be"):
        PFDCallback(mon, prefix="")


def test_import_pfd_does_not_import_frameworks():
    code = ("import sys, pfd, pfd.integrations, pfd.monitor; "
            "print(any(m.split('.')[0] in ('lightning', 'pytorch_lightning', 'torchmetrics', 'matplotlib') "
            "for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_ddp_two_processes(tmp_path):
    """Lightning DDP on 2 CPU processes (gloo): every rank evaluates, all agree, rank 0 logs."""
    import os
    from pathlib import Path

    here = Path(__file__).resolve().parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(here.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(here / "_lightning_ddp_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=here.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["world"] == 2
    h0, h1 = ranks[0]["history"], ranks[1]["history"]
    assert [h["step"] for h in h0] == [h["step"] for h in h1] and len(h0) == 2  # sanity check skipped
    assert [h["pfd"] for h in h0] == [h["pfd"] for h in h1] and all(h["world_size"] == 2 for h in h0)
    # the final value is the single-process PFD of the trained generator
    net = Distill().net
    net.load_state_dict(torch.load(tmp_path / "net0.pt", weights_only=True))
    direct = pfd.distance(TEACHER.ode_map(steps=8), pfd.OneStepMap(net, shape=(2,)), n=256, progress=False, group=False)
    assert h0[-1]["pfd"] == direct.value
    assert ranks[0]["logged"] == pytest.approx(direct.value, rel=1e-6) == ranks[1]["logged"]
    assert [r["step"] for r in pfd.monitor.read_log(tmp_path / "pfd.jsonl")] == [h["step"] for h in h0]
