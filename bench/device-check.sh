#!/usr/bin/env bash
# One prepared check of eldarts on a GPU, within a time budget (issue 8). Steps, most wanted first:
#   1. ops: each operator of the search spaces, fused as the supernet runs it, on the GPU (fp32 channels_last)
#      against the same supernet in float64 on the CPU, one child process until one fails
#      (bench/check_cuda_ops.py: a crash names its operator, and a rerun with CUDA_LAUNCH_BLOCKING=1 its kernel);
#   2. graphs: runtime.cuda_graphs against eager steps, a tiny search and a tiny training each run eagerly twice
#      (the noise floor) and replayed as a CUDA graph (bench/check_cuda_graphs.py; its table is in the log);
#   3. search: the search-step table on CUDA, eager: EL-DARTS / PC-DARTS / DARTS at batch 256 beside the
#      edge-by-edge reference, peak GPU memory (bench/bench_search.py);
#   4. projection: a 2-epoch full-size CIFAR-10 search from the JPEG archive (one warm-up epoch, one with
#      architecture steps), projected to the paper's 50 epochs (15 warm-up + 35);
#   5. eval: evaluation-training throughput, DARTS_V2 C=36, 20 cells, batch 96, eager: the references,
#      eldarts' defaults, fp32 and NCHW fp32 (what each default costs; bench/bench_eval.py);
#   6. amp: bf16 autocast against fp32 for the search (bench/bench_amp.py);
#   7. compiled-search: the EL-DARTS search step at batch 256 eager, as one CUDA graph of its eager kernels
#      (runtime.cuda_graphs) and compiled with CUDA graphs (runtime.compile: reduce-overhead), the speed-ups
#      against the eager row, with 60% of the time left (on the CPU: the compiled step alone);
#   8. compiled-eval: the evaluation-training step as one CUDA graph (runtime.cuda_graphs; CUDA only) and
#      compiled (likewise), with the rest.
# Each step runs under its share of --budget; one that fails or runs out of time is reported as such and the
# next one still runs. --skip names steps not to run (e.g. --skip projection,amp once their figures exist). The
# summary at the end lists every step's outcome and every table row that did not run (a compile past its time,
# say); the exit status is 0 when every step that was not skipped ran.
#
#   bash bench/device-check.sh [--device cuda] [--data PATH/cifar10-jpeg.tar.gz] [--out DIR] [--budget SECONDS]
#                              [--wheels DIR] [--skip STEP,...] [--set KEY=VALUE ...]
#   bash bench/device-check.sh --device cpu --dry     # the same steps at toy sizes, to test the script
# --set (repeatable) goes to the two-epoch search of step 4 (--set runtime.cuda_graphs=true: the projection with
# the step replayed as one CUDA graph).
#
# A GPU machine without package registries (the device tool's): first, on a machine where pip works,
# `bash bench/device-prepare.sh` puts the missing packages' wheels in .device-wheels/ and the CIFAR-10 archive in
# .device-data/ (both git-ignored); carry both. Where packages are missing, this script installs .device-wheels/
# (--wheels DIR: always, from DIR; --wheels none: never) into a temporary folder on PYTHONPATH; it refuses to start, naming them, if
# packages are still missing.
#
# Results go to --out (default: $OUT when the device tool sets it, else bench/device-check-out/), 8 files (the
# device tool brings back at most 8): device-check.log (all output, the two-epoch search's too) and results-*.md.
set -uo pipefail
cd "$(dirname "$0")/.."

device=cuda
dry=0
data=""
out="${OUT:-bench/device-check-out}"
budget=""
wheels=""
skip=""
projection_sets=()
steps="ops graphs search projection eval amp compiled-search compiled-eval"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;
    --wheels) wheels="$2"; shift 2 ;;
    --skip) skip="${2//,/ }"; shift 2 ;;
    --set) projection_sets+=(--set "$2"); shift 2 ;;
    --dry) dry=1; shift ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;  # the comment at the top
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$budget" in
  "") if [ "$dry" = 1 ]; then budget=1800; else budget=480; fi ;;
  *[!0-9]*) echo "error: --budget takes whole seconds, not '$budget'" >&2; exit 2 ;;
esac
for name in $skip; do
  case " $steps " in
    *" $name "*) ;;
    *) echo "error: --skip $name: no such step (steps: ${steps// /, })" >&2; exit 2 ;;
  esac
done
if [ -n "$wheels" ] && [ "$wheels" != none ] && ! ls "$wheels"/*.whl >/dev/null 2>&1; then
  echo "error: --wheels $wheels holds no .whl files" >&2; exit 2
fi
if [ -z "$data" ]; then
  for candidate in .device-data/cifar10-jpeg.tar.gz ../shared/datasets/cifar10-jpeg.tar.gz; do
    if [ -f "$candidate" ]; then data="$candidate"; break; fi
  done
fi
if [ "$dry" = 0 ] && [ -z "$data" ]; then
  echo "error: the CIFAR-10 JPEG archive was not found; give --data PATH (or run bench/device-prepare.sh)" >&2
  exit 2
fi
mkdir -p "$out" || exit 2

main() {
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
log() { echo "[$(( $(date +%s) - start ))s] $*"; }

# imports_missing: the packages the steps import that this Python lacks, one line ("" when none); when none is
# missing it writes what the environment is into $envfile (one Python start for both: importing torch takes seconds)
scratch=$(mktemp -d)  # the environment line, carried wheels, the two-epoch search: removed when main ends
trap 'rm -rf "$scratch"' EXIT  # (main runs in a subshell, piped into tee)
envfile=$scratch/environment
imports_missing() {
  "$py" - "$envfile" <<'EOF'
import importlib, sys
names = {"torch": "torch", "torchvision": "torchvision", "timm": "timm", "typer": "typer",
         "rich": "rich", "pydantic": "pydantic", "yaml": "pyyaml", "PIL": "pillow", "numpy": "numpy",
         "matplotlib": "matplotlib", "eldarts_cli.cli": "eldarts (this repository)"}
lost = []
for module, package in names.items():
    try:
        importlib.import_module(module)
    except Exception as error:  # not only ImportError: a package too old for another can fail otherwise
        lost.append(f"{package} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
if not lost:  # thop imports distutils, which Python 3.12 lacks: eldarts imports it with a stand-in (models/sizes.py)
    try:
        from eldarts_cli.models.sizes import _import_thop
        _import_thop()
    except Exception as error:
        lost.append(f"thop ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
if not lost:
    import platform, pydantic, timm, torch, typer
    lines = [f"torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}, "
             f"pydantic {pydantic.VERSION}, timm {timm.__version__}, typer {typer.__version__}"]
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name()}, bf16: {torch.cuda.is_bf16_supported()}")
    with open(sys.argv[1], "w") as out:
        out.write("\n".join(lines) + "\n")
print("; ".join(lost))
EOF
}
missing=$(imports_missing)
if [ -z "$wheels" ] && [ -n "$missing" ] && [ -d .device-wheels ]; then wheels=.device-wheels; fi
if [ -n "$wheels" ] && [ "$wheels" != none ]; then  # given, or needed: installed beside this Python's packages, ahead of them on the path
  site=$scratch/site
  log "installing $(ls "$wheels"/*.whl | wc -l) carried wheels from $wheels into $site"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$site" "$wheels"/*.whl || { echo "error: the wheels in $wheels did not install (above)"; return 2; }
  export PYTHONPATH="$PWD:$site${PYTHONPATH#"$PWD"}"
  missing=$(imports_missing)
fi
if [ -n "$missing" ]; then
  echo "error: cannot import: $missing. Where pip works, run bash bench/device-prepare.sh and carry .device-wheels"
  return 2
fi

log "environment"
cat "$envfile"

if [ "$dry" = 1 ]; then
  toy=(--set network.channels=8 --set network.layers=5)
  ops_args=(--device cpu --quick --batch 4 --size 8 --channels 8 --layers 3)
  search_args=(--batches 8 --steps 1 --warmup 1 --recipes el-darts --interleaved --variants eldarts,reference "${toy[@]}")
  compiled_args=(--batches 8 --steps 1 --warmup 1 --recipes el-darts --variants compiled "${toy[@]}")
  amp_args=(--quick)
  eval_args=(--sizes 8x5 --batch 8 --rounds 1 --steps 1 --warmup 1 --defaults-only --timeout 120)
  compiled_eval_args=(--sizes 8x5 --batch 8 --rounds 1 --steps 1 --warmup 1)
  epoch_sets=(--set data.dataset=fake --set data.limit=64 --set data.batch_size=16 --set network.channels=8
              --set network.layers=5 --set search.max_steps=2 --set search.val_batches=1)
  caps=(120 600 400 300 300)
  graphs_cap=300
else
  # caps and step counts from the first GPU run (H200, 2026-11-30): 6 search processes of 5 steps took about
  # 110 s, the 2-epoch search 93 s, 3 evaluation rows about 60 s (5 here)
  ops_args=(--device "$device")
  # eldarts and the reference only: the public-code step's row (a third process per recipe) would not fit the cap
  search_args=(--batches 256 --steps 5 --warmup 2 --timeout 50 --variants eldarts,reference)
  # the step as one CUDA graph of eager kernels (runtime.cuda_graphs), then compiled with CUDA graphs
  # (runtime.compile: reduce-overhead), beside the eager step: the GPU runs' steps looked bound by the host's
  # kernel launches (about 4,400 kernel calls a forward and backward: bench/results-calls.md), which graph replay
  # removes; the compiled row did not finish in 293 s on the second GPU run, so it runs last, in the time left
  compiled_args=(--batches 256 --steps 10 --warmup 4 --recipes el-darts --variants eldarts,step-graph,graphs
                 --baseline eldarts)
  amp_args=()
  eval_args=(--sizes 36x20 --rounds 1 --timeout 40)  # 5 rows: references, defaults, fp32, NCHW fp32
  compiled_eval_args=(--sizes 36x20 --rounds 1 --compile-mode reduce-overhead)
  epoch_sets=(--set "data.root=$data")
  caps=(100 150 140 130 45)
  graphs_cap=90  # three two-epoch quickstart searches and three two-epoch eval-quick trainings
fi

failed=0
summary=()
# run_step NAME CAP COMMAND...: COMMAND under min(CAP, what is left of the budget); its outcome into the summary.
# NAME's second word is the step's --skip key; a step --skip names is not run (and is no failure)
run_step() {
  local name=$1 cap=$2
  shift 2
  local key=${name#* }
  key=${key%%:*}
  case " $skip " in *" $key "*) log "$name: skipped (--skip)"; summary+=("$name: skipped (--skip)"); return 1 ;; esac
  local left=$(( budget - ($(date +%s) - start) ))
  local limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 15 ]; then
    log "$name: skipped (${left}s of the ${budget}s budget left)"
    summary+=("$name: skipped, budget spent"); failed=1
    return 1
  fi
  log "$name (at most ${limit}s)"
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  local took=$(( $(date +%s) - t0 ))
  case $rc in
    0) summary+=("$name: ok, ${took}s") ;;
    124|137) summary+=("$name: timed out after ${limit}s"); failed=1 ;;
    *) summary+=("$name: failed (exit $rc) after ${took}s"); failed=1 ;;
  esac
  return $rc
}

run_step "1/8 ops: each operator against float64 on the CPU" "${caps[0]}" \
  "$py" bench/check_cuda_ops.py "${ops_args[@]}" --write "$out/results-ops-$device.md"

# no file of its own (the device tool brings 8 back): its table is in device-check.log
run_step "2/8 graphs: runtime.cuda_graphs' replayed steps against eager ones" "$graphs_cap" \
  "$py" bench/check_cuda_graphs.py --device "$device"

run_step "3/8 search: the search-step table on $device" "${caps[1]}" \
  "$py" bench/bench_search.py --device "$device" "${search_args[@]}" --write "$out/results-search-$device.md"

run=$scratch/search-2epochs  # the run folder stays out of --out (the device tool brings 8 files back)
if run_step "4/8 projection: a two-epoch full-size search, projected to 50 epochs" "${caps[2]}" \
  "$py" -m eldarts_cli search recipes/search-cifar10-jpeg.yaml --device "$device" --out "$run" \
  --set search.epochs=2 --set search.warmup_epochs=1 "${epoch_sets[@]}" ${projection_sets[@]+"${projection_sets[@]}"}; then
  "$py" - "$run" ${projection_sets[@]+"${projection_sets[@]}"} <<'EOF' | tee "$out/results-search-projection-$device.md"
import json, sys
from pathlib import Path
rows = [json.loads(line) for line in (Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines()]
warm, arch = rows[0]["epoch_seconds"], rows[1]["epoch_seconds"]
projected = 15 * warm + 35 * arch  # the paper's 50 epochs: 15 of weight training only (warm-up), 35 with both steps
summary = json.loads((Path(sys.argv[1]) / "summary.json").read_text())
given = " ".join(f"--set {value}" for value in sys.argv[3::2])  # this script's --set, if any
print(f"Search of recipes/search-cifar10-jpeg.yaml{' with ' + given if given else ''} on {summary['device']}: "
      f"warm-up epoch {warm:.1f} s, "
      f"epoch with architecture steps {arch:.1f} s ({rows[1]['images_per_s']:.0f} images/s); "
      f"50 epochs (15 + 35) projected at {projected / 60:.1f} min, data loading excluded.")
EOF
fi

run_step "5/8 eval: evaluation-training throughput" "${caps[3]}" \
  "$py" bench/bench_eval.py --device "$device" "${eval_args[@]}" --write "$out/results-eval-$device.md"

run_step "6/8 amp: bf16 against fp32" "${caps[4]}" \
  "$py" bench/bench_amp.py --device "$device" "${amp_args[@]}" --write "$out/results-amp-$device.md"

left=$(( budget - ($(date +%s) - start) ))
case " $skip " in *" compiled-eval "*) share=$left ;; *) share=$(( left * 3 / 5 )) ;; esac
# each of the 3 rows has this long (the step's cap is the share; a step past it writes no table): the eager and
# one-graph rows take well under a minute each, so the compiled row gets the rest, or a third each when little is left
if [ "$dry" = 1 ]; then compile_timeout=3
else compile_timeout=$(( share > 150 ? share - 90 : (share / 3 > 12 ? share / 3 - 2 : 10) )); fi
run_step "7/8 compiled-search: the EL-DARTS search step as one CUDA graph, and compiled" "$share" \
  "$py" bench/bench_search.py --device "$device" "${compiled_args[@]}" \
  --timeout "$compile_timeout" --write "$out/results-search-compiled-$device.md"

left=$(( budget - ($(date +%s) - start) ))
# each of the 2 rows has this long: on CUDA the one-graph row takes well under a minute, the compiled row the rest,
# or half each when little is left
if [ "$dry" = 1 ]; then compile_timeout=3
else compile_timeout=$(( left > 90 ? left - 60 : (left / 2 > 12 ? left / 2 - 2 : 10) )); fi
run_step "8/8 compiled-eval: the evaluation-training step as one CUDA graph, and compiled" "$left" \
  "$py" bench/bench_eval.py --device "$device" "${compiled_eval_args[@]}" --compiled-only \
  --timeout "$compile_timeout" --write "$out/results-eval-compiled-$device.md"

for table in "$out"/results-*.md; do  # rows that did not run (timed out, out of memory, failed): named, not hidden
  [ -f "$table" ] || continue
  count=$(grep -c -E '\| (timed out after|out of memory|failed:|refused by)' "$table")
  if [ "$count" -gt 0 ]; then summary+=("$(basename "$table"): $count row(s) did not run (see the table)"); fi
done
log "summary (budget ${budget}s; results in $out):"
for line in "${summary[@]}"; do echo "  $line"; done
return $failed
}

main 2>&1 | tee "$out/device-check.log"  # everything is also in the log
exit "${PIPESTATUS[0]}"
