#!/usr/bin/env bash
# The three GPU benchmarks of README "Many processes and GPUs", one after the other, each table also
# written to ${OUT:-gpu-results}/<name>.txt. Run from the repository root on a machine with a CUDA GPU:
#   bash benchmarks/gpu.sh            # not timed yet; the torch.compile row warms up for minutes
#   bash benchmarks/gpu.sh --tiny     # CPU smoke test of all three
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONPATH=.
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee "$out/device.txt"
python -c "import torch, diffusers, peft, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'diffusers', diffusers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" | tee -a "$out/device.txt"
status=0
for bench in "benchmarks/sd_generation.py --compile" "-m benchmarks.gpu_shadows" "-m benchmarks.sd_finetune"; do
  name=$(echo "$bench" | sed 's/.*benchmarks[./]\([a-z_]*\).*/\1/')
  echo "== $bench $*" | tee "$out/$name.txt"
  # shellcheck disable=SC2086
  python $bench "$@" 2>&1 | grep -v "should be kept in float32" | tee -a "$out/$name.txt" || status=1
done
exit $status
