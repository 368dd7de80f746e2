"""Worker for the DDP test in tests/test_integrations_lightning.py (run by torchrun). Not collected."""

import json
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_integrations_lightning import TEACHER, Distill, _loaders

from pfd.integrations.lightning import PFDCallback


def main(out: Path) -> None:
    cb = PFDCallback(reference=TEACHER.ode_map(steps=8), n=256, seed=0, log_path=out / "pfd.jsonl")
    train, val = _loaders()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", callbacks=[cb],
                        default_root_dir=out, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=1)
    model = Distill()
    trainer.fit(model, train, val)
    rank = trainer.global_rank
    torch.save(model.net.state_dict(), out / f"net{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps({"history": cb.monitor.history, "world": trainer.world_size,
                                                      "logged": float(trainer.callback_metrics["pfd/value"])}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
