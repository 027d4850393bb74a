#!/usr/bin/env bash
# Downloads the wheels that benchmarks/gpu.sh installs on the GPU machine into .gpu-wheels/ (git-ignored),
# for that machine's Python: 3.12 on x86-64 Linux (manylinux). Its image already holds torch, torchvision,
# accelerate, safetensors, huggingface_hub, tokenizers, numpy, scipy, scikit-learn, pandas and pillow, and
# no network; it lacks diffusers, opacus and prdc, and its transformers, peft and timm are not the versions
# requirements.txt pins. So exactly these six travel, at requirements.txt's versions, without their
# dependencies (--no-deps: the image has them). Run here, where pip reaches the registry:
#   bash benchmarks/gpu-wheels.sh            # then carry .gpu-wheels with the working tree
# The device tool sends the working tree and the carried folders, 64 MiB in all: this prints the sizes and
# stops with an error when the wheels and the tracked files would not fit.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.gpu-wheels
python_version=${GPU_PYTHON_VERSION:-3.12}
packages=(diffusers peft timm transformers opacus prdc)
limit_mib=64

pins=()
for name in "${packages[@]}"; do
  pin=$(grep -iE "^${name}==" requirements.txt | sed 's/[[:space:]]*#.*//' || true)
  [ -n "$pin" ] || { echo "gpu-wheels.sh: $name is not pinned in requirements.txt" >&2; exit 2; }
  pins+=("$pin")
done
mkdir -p "$dest"
rm -f "$dest"/*.whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$dest" "${pins[@]}"

echo "wheels for Python $python_version in $dest:"
wheels=0
for wheel in "$dest"/*.whl; do
  size=$(stat -c %s "$wheel")
  wheels=$((wheels + size))
  printf '  %8.1f MiB  %s\n' "$(echo "$size / 1048576" | bc -l)" "$(basename "$wheel")"
done
tracked=$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
total=$((wheels + tracked))
printf '  %8.1f MiB  the wheels\n  %8.1f MiB  tracked files\n  %8.1f MiB  in all (limit %d MiB)\n' \
  "$(echo "$wheels / 1048576" | bc -l)" "$(echo "$tracked / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)" "$limit_mib"
if [ "$total" -ge $((limit_mib * 1048576)) ]; then
  echo "gpu-wheels.sh: the wheels and the tracked files exceed $limit_mib MiB" >&2
  exit 1
fi
