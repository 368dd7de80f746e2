#!/usr/bin/env bash
# One device call of the fair MtoG sweep on the digits teacher (one H100/H200 through the device
# tool; see docs/generalization.md, "The fair MtoG sweep"). Sizes: the plain MLPs that copy at
# N = 8 (>= ~50k parameters, benchmarks/memorization_recipes.py) spanning 112x in |theta|.
#
#   run: bash benchmarks/mtog_digits_device.sh        (WALL=seconds of training, default 420)
#
# The runs file and the per-size checkpoints live in $MTOG_DIR (default benchmarks/results/gpu,
# git-ignored): a second call on the same warm machine continues the sizes the wall
# budget stopped (bit for bit). Finished runs are keyed by all their settings, so carrying the
# returned mtog_digits_runs.jsonl back into $MTOG_DIR on a fresh machine skips them. Results are
# copied to $OUT (the device tool's return folder) when it is set.
set -euo pipefail
MTOG_DIR=${MTOG_DIR:-benchmarks/results/gpu}
mkdir -p "$MTOG_DIR"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
t0=$(date +%s)
PYTHONPATH=. PYTHONUNBUFFERED=1 python benchmarks/mtog_digits.py --device cuda --processes 4 \
  --sizes mlp:128:3,mlp:320:3,mlp:736:3,mlp:1664:3 --n-min 8 --n-max 4096 --seeds 5 --n-eval 4096 \
  --max-steps 30000 --wall-budget "${WALL:-420}" --checkpoint-every 0 --out-dir "$MTOG_DIR" --no-teacher-figure
echo "sweep call took $(( $(date +%s) - t0 )) s"
if [ -n "${OUT:-}" ]; then cp "$MTOG_DIR"/mtog_digits.json "$MTOG_DIR"/mtog_digits.png "$MTOG_DIR"/mtog_digits_runs.jsonl "$OUT"/; fi
