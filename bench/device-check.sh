#!/usr/bin/env bash
# One prepared check of eldarts on a GPU, a few minutes end to end (issue 8):
#   1. the search-step table on CUDA: eager, compiled and recomputing (runtime.recompute), EL-DARTS / PC-DARTS /
#      DARTS, batch 256, beside the edge-by-edge reference, peak GPU memory (bench/bench_search.py);
#   2. bf16 autocast against fp32 for the search (bench/bench_amp.py);
#   3. a 2-epoch full-size CIFAR-10 search from the JPEG archive (one warm-up epoch, one with
#      architecture steps), projected to the paper's 50 epochs (15 warm-up + 35);
#   4. evaluation-training throughput, DARTS_V2 C=36, 20 cells, batch 96 (bench/bench_eval.py).
#
#   bash bench/device-check.sh [--device cuda] [--data PATH/cifar10-jpeg.tar.gz] [--out DIR]
#   bash bench/device-check.sh --device cpu --dry     # the same steps at toy sizes, to test the script
#
# Results go to --out (default: $OUT when the device tool sets it, else bench/device-check-out/).
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
dry=0
data=""
out="${OUT:-bench/device-check-out}"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --dry) dry=1; shift ;;
    *) echo "error: unknown argument $1 (see the comment at the top of $0)" >&2; exit 2 ;;
  esac
done
if [ -z "$data" ]; then
  for candidate in .device-data/cifar10-jpeg.tar.gz ../shared/datasets/cifar10-jpeg.tar.gz; do
    if [ -f "$candidate" ]; then data="$candidate"; break; fi
  done
fi
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$py" -c "import eldarts_cli" 2>/dev/null; then
  "$py" -m pip install -q -e . >/dev/null  # a bare GPU machine: install the project first
fi
start=$(date +%s)
log() { echo "[$(( $(date +%s) - start ))s] $*"; }

log "environment"
"$py" - <<'EOF' | tee "$out/environment.txt"
import platform, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}")
if torch.cuda.is_available():
    print(f"GPU: {torch.cuda.get_device_name()}, bf16: {torch.cuda.is_bf16_supported()}")
EOF

if [ "$dry" = 1 ]; then
  search_args=(--batches 8 --steps 1 --warmup 1 --recipes el-darts --recompute --interleaved --set network.channels=8 --set network.layers=5)
  amp_args=(--quick)
  eval_args=(--sizes 8x5 --batch 8 --rounds 1 --steps 1 --warmup 1)
  epoch_sets=(--set data.dataset=fake --set data.limit=64 --set data.batch_size=16 --set network.channels=8
              --set network.layers=5 --set search.max_steps=2 --set search.val_batches=1)
else
  search_args=(--batches 256 --steps 10 --warmup 3 --compile --recompute --interleaved)
  amp_args=()
  eval_args=(--sizes 36x20 --rounds 1)
  if [ -z "$data" ]; then
    echo "error: the CIFAR-10 JPEG archive was not found; give --data PATH (or copy it to .device-data/)" >&2
    exit 2
  fi
  epoch_sets=(--set "data.root=$data")
fi

log "1/4 search-step table on $device"
"$py" bench/bench_search.py --device "$device" "${search_args[@]}" --write "$out/results-search-$device.md"

log "2/4 bf16 against fp32"
"$py" bench/bench_amp.py --device "$device" "${amp_args[@]}" --write "$out/results-amp-$device.md"

log "3/4 two-epoch full-size search, projected to 50 epochs"
run="$out/search-2epochs"
rm -rf "$run"
"$py" -m eldarts_cli search recipes/search-cifar10-jpeg.yaml --device "$device" --out "$run" \
  --set search.epochs=2 --set search.warmup_epochs=1 "${epoch_sets[@]}" > "$out/search-2epochs.log" 2>&1 \
  || { tail -20 "$out/search-2epochs.log"; exit 1; }
"$py" - "$run" <<'EOF' | tee "$out/results-search-projection-$device.md"
import json, sys
from pathlib import Path
rows = [json.loads(line) for line in (Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines()]
warm, arch = rows[0]["epoch_seconds"], rows[1]["epoch_seconds"]
projected = 15 * warm + 35 * arch  # the paper's 50 epochs: 15 of weight training only (warm-up), 35 with both steps
summary = json.loads((Path(sys.argv[1]) / "summary.json").read_text())
print(f"Search of recipes/search-cifar10-jpeg.yaml on {summary['device']}: warm-up epoch {warm:.1f} s, "
      f"epoch with architecture steps {arch:.1f} s ({rows[1]['images_per_s']:.0f} images/s); "
      f"50 epochs (15 + 35) projected at {projected / 60:.1f} min, data loading excluded.")
EOF

log "4/4 evaluation-training throughput"
"$py" bench/bench_eval.py --device "$device" "${eval_args[@]}" --write "$out/results-eval-$device.md"
log "done; results in $out"
