#!/usr/bin/env bash
# Downloads the wheels that benchmarks/gpu.sh installs on the GPU machine into .gpu-wheels/ (git-ignored).
# That machine has no network and a Python with torch and the scientific stack (numpy, scipy, scikit-learn,
# pillow) but without diffusers, peft and timm; what else it holds, and at which versions, is not known
# here. So every package the benchmarks import beyond torch and that stack travels, at the version this
# repository tests with (requirements.txt's pin, else the version installed here), without its
# dependencies (--no-deps: those are the travelling packages themselves or the stack above). All of them
# are pure Python or abi3 wheels (Python >= 3.10), so they install on whichever recent Python the machine has.
# Run here, where pip reaches the registry:
#   bash benchmarks/gpu-wheels.sh            # then carry .gpu-wheels with the working tree
# The device tool sends the working tree and the carried folders, 64 MiB in all: this prints the sizes and
# stops with an error when the wheels and the tracked files would not fit.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.gpu-wheels
python_version=${GPU_PYTHON_VERSION:-3.12}
packages=(diffusers peft timm transformers accelerate opacus prdc huggingface_hub tokenizers safetensors)
limit_mib=64

pins=()
for name in "${packages[@]}"; do
  pin=$(grep -iE "^${name}==" requirements.txt | sed 's/[[:space:]]*#.*//' || true)
  if [ -z "$pin" ]; then  # not pinned: the version the tests here run with
    version=$(python3 -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null) \
      || { echo "gpu-wheels.sh: $name is neither pinned in requirements.txt nor installed here" >&2; exit 2; }
    pin="$name==$version"
  fi
  pins+=("$pin")
done
mkdir -p "$dest"
rm -f "$dest"/*.whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$dest" "${pins[@]}"

for wheel in "$dest"/*.whl; do  # one Python's binary wheel would not install on another
  case "$wheel" in *-none-any.whl|*-abi3-*.whl) ;; *) echo "gpu-wheels.sh: $wheel is for one Python version only" >&2; exit 1 ;; esac
done
echo "wheels in $dest (for any Python >= 3.10 on x86-64 Linux):"
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
