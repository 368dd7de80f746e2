"""Worker for tests/test_integrations_distributed.py, run by torchrun (gloo, CPU).

Every rank computes the distributed PFD (pfd.distance, PFDMonitor, PFDMetric) and a failing
evaluation, and writes what it saw to <out>/rank<r>.json. Not collected by pytest.
"""

import json
import sys
from pathlib import Path


def setup():
    import torch

    import pfd

    teacher = pfd.GaussianMixture([0.3, 0.7], [[-1.0, 0.0, 0.5], [1.0, 0.5, -0.5]], [0.1, 0.2])
    student = pfd.GaussianMixture([0.5, 0.5], [[-1.1, 0.0, 0.5], [0.9, 0.6, -0.5]], [0.12, 0.2])
    return torch, pfd, teacher, student


N, SEED, BATCH = 1001, 7, 128


def main(out: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    _torch, pfd, teacher, student = setup()
    from pfd.integrations.metric import PFDMetric

    rank, world = dist.get_rank(), dist.get_world_size()
    rec = {"rank": rank, "world": world}
    res = pfd.distance(teacher.ode_map(steps=6), student.ode_map(steps=6), n=N, seed=SEED, batch_size=BATCH,
                       progress=False)
    rec["distance"] = {"value": res.value, "stderr": res.stderr, "ci95": list(res.ci95), "nfe": list(res.nfe),
                       "world_size": res.provenance["world_size"]}
    mon = pfd.PFDMonitor(teacher.ode_map(steps=6), n=N, seed=SEED, batch_size=BATCH, every=1,
                         log_path=out / "monitor.jsonl")
    m0 = mon.evaluate(student.ode_map(steps=6), 0)
    m1 = mon.evaluate(student.ode_map(steps=6), 1)
    rec["monitor"] = {"pfd": [m0["pfd"], m1["pfd"]], "bank_rows": mon.bank.computed_rows,
                      "reference_seconds": [m0["reference_seconds"], m1["reference_seconds"]]}
    metric = PFDMetric(teacher.ode_map(steps=6), n=N, seed=SEED, batch_size=BATCH)
    metric.update(student.ode_map(steps=6))
    rec["metric"] = {"value": float(metric.compute()), "local_count": float(metric.count), "shard": list(metric.shard()),
                     "n": metric.details["n"]}
    # a student that fails only on the last rank's shard: every rank must raise, none may hang
    lo_last = (N * (world - 1)) // world

    def bad(z):
        x = 0.5 * z
        hit = (z - pfd.canonical_noise(1, (3,), seed=SEED, start=lo_last + 3)).abs().sum(1) == 0
        x[hit] = float("nan")
        return x

    try:
        pfd.distance(teacher.ode_map(steps=6), bad, n=N, seed=SEED, batch_size=BATCH, shape=(3,), progress=False)
        rec["error"] = None
    except pfd.NonFiniteError as exc:
        rec["error"] = {"type": type(exc).__name__, "indices": exc.indices}
    (out / f"rank{rank}.json").write_text(json.dumps(rec))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
