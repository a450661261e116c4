#!/usr/bin/env bash
# The wheels a GPU machine with only torch, transformers, peft and accelerate lacks, for
# bench/throughput.py and tests/gpu, at the versions of the default image (images/default.lock),
# for its Python (3.12 unless PY_VERSION says otherwise). Run on a connected machine:
#   bash bench/device_wheels.sh [DIR]          (default DIR: .whl)
# then, on the GPU machine, with DIR beside the checkout:
#   pip install --no-index --no-deps --target /tmp/site DIR/*.whl && export PYTHONPATH=/tmp/site:.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PY_VERSION=${PY_VERSION:-3.12}
PYTHON=${PYTHON:-python3}
PACKAGES=${PACKAGES:-"datasets dill multiprocess pydantic pydantic-core annotated-types typing-inspection
          ruamel-yaml transformers peft accelerate bitsandbytes liger-kernel"}
mkdir -p "$DIR"
for name in $PACKAGES; do
  pin=$(grep -E "^${name}==" images/default.lock | cut -d' ' -f1)
  [ -n "$pin" ] || { echo "device_wheels: $name is not pinned in images/default.lock" >&2; exit 2; }
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform any -d "$DIR" "$pin"
done
du -ch "$DIR"/*.whl | tail -1
