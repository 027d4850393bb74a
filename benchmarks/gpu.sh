#!/usr/bin/env bash
# Every GPU figure of the README from one command on one CUDA GPU, planned to end within 7 minutes on an
# H100, with everything it needs carried along (no network there):
#   bash benchmarks/gpu-wheels.sh                        # here: the wheels, into .gpu-wheels/ (carry it)
#   bash benchmarks/gpu.sh RESULTS_DIR                   # there: results.md (one table + versions), gpu.log
#   bash benchmarks/gpu.sh --cpu-rehearsal RESULTS_DIR   # here: the same script at tiny sizes on the CPU
#   bash benchmarks/gpu.sh --only paper-toy,shadows-resnet18 RESULTS_DIR   # some parts again
# GPU_WHEELS=DIR takes the wheels from DIR instead of .gpu-wheels (an empty one: this Python's own packages).
# Without a visible CUDA GPU it stops at once (so do the Python benchmarks: no silent CPU fallback); the
# rehearsal replaces that check by a note and runs every part with --tiny on the CPU, so every code path
# but the GPU kernels runs before any GPU time is spent. Each part has its own time limit (a part that
# overruns is stopped and reported, the others still run); the compiled sampling row runs last; the plan
# below prints each part's limit and their sum, and refuses to start if the sum exceeds 7 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."

mode=gpu
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-rehearsal) mode=cpu; shift ;;
    --only) only=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set /p' "$0" | grep '^#' | cut -c3-; exit 0 ;;
    -*) echo "gpu.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -eq 1 ] || { echo "usage: bash benchmarks/gpu.sh [--cpu-rehearsal] [--only PART,...] RESULTS_DIR" >&2; exit 2; }
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)
md=$out/results.md
log=$out/gpu.log
python=${PYTHON:-python3}
wheels=${GPU_WHEELS:-.gpu-wheels}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
  HF_HUB_DISABLE_PROGRESS_BARS=1  # no Hub: a stray id fails at once; no loading bars in the log

# -- the plan: parts in order, each with its limit on an H100 and in the CPU rehearsal (seconds) ----------
parts=(setup sampling finetune shadows-small-resnet shadows-resnet18 paper-toy sampling-compiled)
declare -A gpu_limit=([setup]=30 [sampling]=65 [finetune]=70 [shadows-small-resnet]=40 [shadows-resnet18]=65
                      [paper-toy]=40 [sampling-compiled]=85)
declare -A cpu_limit=([setup]=180 [sampling]=600 [finetune]=600 [shadows-small-resnet]=600 [shadows-resnet18]=600
                      [paper-toy]=600 [sampling-compiled]=600)  # the rehearsal took 15 min here at a load of 14 on 2 cores
declare -A what=(
  [setup]="install the carried wheels ($wheels), library and device versions"
  [sampling]="SD 2 (768-v layout) + LoRA sampling, 224 px / 20 steps / CFG 2: fp16 (TCKR), bf16, fused LoRA, channels_last, pt, batch 128"
  [finetune]="LoRA fine-tuning steps/s and peak memory: fp16, bf16, bf16 + gradient checkpointing, each model alone"
  [shadows-small-resnet]="small-resnet shadows/h at 32 px: one at a time, vmap-stacked 16 and 64, 4 processes"
  [shadows-resnet18]="ResNet-18 shadows/h at 32 px: one at a time, vmap-stacked 16 and 64, 4 processes"
  [paper-toy]="the paper preset at toy size end to end (tiny SD 2 + BLIP-2 + MobileNetV3): stage wall times"
  [sampling-compiled]="the sampling row with torch.compile (UNet whole graph, VAE decoder): last, it compiles for a minute or more")
grace=3     # seconds a part gets to stop after its limit before it is killed
budget=420  # 7 minutes

python_part() {  # the command of a Python part, with the rehearsal's tiny sizes
  local tiny="" ; [ "$mode" = cpu ] && tiny="--tiny"
  case "$1" in
    sampling) echo "$python -m benchmarks.sd_generation $tiny ${tiny:+--steps 3} --markdown $md" ;;
    finetune) echo "$python -m benchmarks.sd_finetune $tiny --markdown $md" ;;
    shadows-small-resnet) echo "$python -m benchmarks.gpu_shadows $tiny --models small-resnet --markdown $md" ;;
    shadows-resnet18) echo "$python -m benchmarks.gpu_shadows $tiny --models resnet18 --markdown $md" ;;
    paper-toy) echo "$python -m benchmarks.paper_toy ${tiny:+--device cpu} --markdown $md" ;;
    sampling-compiled) echo "$python -m benchmarks.sd_generation $tiny ${tiny:+--steps 3} --rows compile --markdown $md" ;;
  esac
}

selected=()
for part in "${parts[@]}"; do
  if [ -z "$only" ] || [[ ",$only," == *",$part,"* ]]; then selected+=("$part"); fi
done
for part in ${only//,/ }; do
  [ -n "${gpu_limit[$part]+x}" ] || { echo "gpu.sh: unknown part $part; valid: ${parts[*]}" >&2; exit 2; }
done

sum=0
for part in "${parts[@]}"; do sum=$((sum + gpu_limit[$part] + grace)); done
{
  echo "plan on one H100 (limits in seconds; each part gets ${grace} s more to stop):"
  for part in "${parts[@]}"; do
    printf '  %-22s %4d s  %s\n' "$part" "${gpu_limit[$part]}" "${what[$part]}"
  done
  printf '  %-22s %4d s  (limits + %d x %d s to stop) <= %d s (7 min): %s\n' "sum" "$sum" "${#parts[@]}" "$grace" \
    "$budget" "$([ "$sum" -le "$budget" ] && echo yes || echo NO)"
  if [ "$mode" = cpu ]; then
    echo "CPU rehearsal: the same parts at tiny sizes, limits here:$(for p in "${selected[@]}"; do printf ' %s %d s;' "$p" "${cpu_limit[$p]}"; done)"
  fi
} | tee "$log"
[ "$sum" -le "$budget" ] || { echo "gpu.sh: the plan exceeds $budget s" >&2; exit 2; }

# -- at once: CUDA, or the rehearsal's note ------------------------------------------------------------
if [ "$mode" = gpu ]; then
  if ! $python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>>"$log"; then
    echo "gpu.sh: CUDA is not visible to $python (torch: $($python -c 'import torch; print(torch.__version__)' 2>&1)); \
nothing was run. On a machine without a GPU run: bash benchmarks/gpu.sh --cpu-rehearsal $out" | tee -a "$log" >&2
    exit 2
  fi
else
  echo "note: CPU rehearsal: the CUDA check is skipped and every part runs with --tiny on the CPU; its figures \
measure nothing but that the code runs" | tee -a "$log"
fi

# -- the carried wheels: installed where this Python finds them first ----------------------------------
site=${TMPDIR:-/tmp}/tckr-gpu-site
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
setup() {
  if ls "$wheels"/*.whl >/dev/null 2>&1; then
    rm -rf "$site"
    $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      "$wheels"/*.whl || return 1
    echo "installed $(ls "$wheels"/*.whl | wc -l) carried wheels into $site"
  else
    echo "no carried wheels in $wheels (bash benchmarks/gpu-wheels.sh makes them): using $python's own packages"
  fi
  $python - <<'EOF' || return 1
import importlib, importlib.metadata, platform, subprocess, torch
missing = [m for m in ("diffusers", "peft", "timm", "transformers", "opacus", "prdc", "accelerate")
           if importlib.util.find_spec(m) is None]
if missing:
    raise SystemExit(f"missing packages: {', '.join(missing)}; carry them (bash benchmarks/gpu-wheels.sh)")
rows = [("python", platform.python_version()), ("torch", f"{torch.__version__} (CUDA {torch.version.cuda})")]
for name in ("diffusers", "transformers", "peft", "timm", "accelerate", "opacus", "prdc", "numpy"):
    importlib.import_module(name)  # it imports here, or the part that needs it would fail later
    rows.append((name, importlib.metadata.version(name)))
if torch.cuda.is_available():
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    rows.append(("device", smi or torch.cuda.get_device_name()))
else:
    rows.append(("device", f"cpu ({platform.processor() or platform.machine()})"))
print("versions: " + "; ".join(f"{k} {v}" for k, v in rows))
EOF
}

# -- the results file: a title, the table (each benchmark appends its rows), then versions --------------
{
  echo "# GPU benchmarks ($([ "$mode" = cpu ] && echo "CPU rehearsal: tiny sizes, figures mean nothing" || echo "one command"))"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); parts: ${selected[*]}"
  echo
  $python -c "from benchmarks.gpu_common import HEADER; print(HEADER, end='')" 2>/dev/null \
    || printf '| part | row | value | unit | peak GiB | note |\n| --- | --- | --- | --- | --- | --- |\n'
} > "$md"

status=0
versions=""
started_all=$(date +%s.%N)
for part in "${selected[@]}"; do
  limit=${gpu_limit[$part]}
  [ "$mode" = cpu ] && limit=${cpu_limit[$part]}
  echo "== $part (limit $limit s): ${what[$part]}" | tee -a "$log"
  started=$(date +%s.%N)
  if [ "$part" = setup ]; then
    export -f setup; export python site wheels
    timeout -k "$grace" "$limit" bash -c setup 2>&1 | tee -a "$log" "$out/.setup"
    code=${PIPESTATUS[0]}
    versions=$(grep '^versions: ' "$out/.setup" | sed 's/^versions: //')
    rm -f "$out/.setup"
  else
    # shellcheck disable=SC2046
    timeout -k "$grace" "$limit" $(python_part "$part") 2>&1 \
      | grep --line-buffered -v -e "should be kept in float32" -e "cannot run with \`cpu\` device" \
        -e "No LoRA keys associated to CLIPTextModel" \
      | tee -a "$log"
    code=${PIPESTATUS[0]}
  fi
  seconds=$(echo "$(date +%s.%N) - $started" | bc)
  case $code in
    0) note="limit $limit s" ;;
    124|137) note="STOPPED at its limit of $limit s (the rows above it were measured)"; status=1 ;;
    *) note="FAILED with exit status $code: see gpu.log"; status=1 ;;
  esac
  printf '| gpu.sh | %s | %.1f | s wall | - | %s |\n' "$part" "$seconds" "$note" >> "$md"
  echo "-- $part: $(printf '%.1f' "$seconds") s, $note" | tee -a "$log"
done
total=$(echo "$(date +%s.%N) - $started_all" | bc)
printf '| gpu.sh | all parts | %.1f | s wall | - | plan: %d s on an H100 |\n' "$total" "$sum" >> "$md"
{
  echo
  echo "Versions: ${versions:-not read (the setup part did not run)}"
  echo
  echo "Command: bash benchmarks/gpu.sh $([ "$mode" = cpu ] && echo "--cpu-rehearsal ")${only:+--only $only }RESULTS_DIR"
} >> "$md"
echo "== results in $md (the log in $log); $(printf '%.1f' "$total") s in all; exit status $status" | tee -a "$log"
exit $status
