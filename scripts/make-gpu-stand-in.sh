#!/usr/bin/env bash
# Build a stand-in for a pytorch/pytorch CUDA *devel* base image without any container registry,
# tagged with the real base's name, so that `runner build default` runs unchanged on a machine that
# cannot pull the real one:
#
#   scripts/make-gpu-stand-in.sh                 # the base that images/default.yaml names
#   scripts/make-gpu-stand-in.sh pytorch/pytorch:2.8.0-cuda12.8-cudnn9-devel
#
# What it carries, as the real base does (runner/core/jobspec/compat.json says what that is):
# - the base's Python (version and path: /opt/conda/bin/python), here Debian bookworm's 3.11;
# - the same torch build, the CUDA wheel from PyPI with its nvidia-* runtime wheels (cuBLAS, cuDNN,
#   NCCL, ...) and triton;
# - a CUDA toolkit at /usr/local/cuda whose nvcc has the CUDA major version of that torch, so that
#   DeepSpeed's op builder and torch's extension builder compile CUDA code in it. PyPI's
#   nvidia-cuda-nvcc-cu12 wheels carry only ptxas, so CUDA 12's compiler comes from Debian trixie's
#   non-free nvidia-cuda-toolkit (12.4), with the headers of the same release.
#
# What differs from the real base (its labels say so, and every image built on it inherits them):
# the distribution (Debian bookworm, not Ubuntu), Python from Debian, not conda, with torch in
# /usr/local/lib/python3.11/dist-packages; nvcc and the CUDA headers are 12.4, the base's own CUDA
# release may be newer within the same major. It is for building and testing images on a machine
# without a GPU or a registry; never ship an image built on it to a GPU server.
#
# Idempotent: does nothing when an image of that name exists (the real base, or a stand-in). The
# downloads (about 5 GB: torch and its CUDA wheels, the toolkit's .debs) are kept in the cache
# folder, so a rebuild fetches nothing. Needs root (or sudo -n), a Docker engine
# (scripts/provision-docker.sh) and, for the first run, PyPI and a Debian mirror.
#
# Environment:
#   STAND_IN_CACHE   download cache (default: offline_wheels/.stand-in beside this script's project)
#   DEBIAN_MIRROR    Debian mirror for trixie's CUDA toolkit (default http://deb.debian.org/debian)
#   PYTHON           python with pip, for the downloads (default: the project's .venv, else python3)
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
log() { printf 'make-gpu-stand-in: %s\n' "$*" >&2; }
die() { printf 'make-gpu-stand-in: ERROR: %s\n' "$*" >&2; exit 1; }
trap 'log "ERROR: failed at line $LINENO: $BASH_COMMAND"' ERR

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null \
        || die "must run as root (or with passwordless sudo): the Docker engine and apt need it"
    SUDO=(sudo -n)
fi
PYTHON="${PYTHON:-}"
[ -n "$PYTHON" ] || { [ -x "$root/.venv/bin/python" ] && PYTHON="$root/.venv/bin/python"; } || PYTHON=python3
CACHE="${STAND_IN_CACHE:-$root/offline_wheels/.stand-in}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TEST_BASE=runner-test/base:bookworm-py311  # Debian bookworm with python3.11, venv, pip, headers, g++

BASE="${1:-}"
if [ -z "$BASE" ]; then
    BASE="$(sed -n 's/^base:[[:space:]]*//p' "$root/images/default.yaml" | sed 's/[[:space:]]*#.*//' | head -n 1)"
    [ -n "$BASE" ] || die "images/default.yaml names no base; pass the base image as the first argument"
fi

# What the real base carries, from the one table the project keeps of it.
carries="$("$PYTHON" - "$root/runner/core/jobspec/compat.json" "$BASE" <<'EOF'
import json, sys
table = json.load(open(sys.argv[1], encoding="utf-8"))
entry = next((b for b in table["bases"] if b["image"] == sys.argv[2]), None)
if entry is None:
    sys.exit(f"{sys.argv[2]} is not in runner/core/jobspec/compat.json; add what it carries there first")
print(entry["torch"], entry["cuda"], entry["python"], entry["python_bin"])
EOF
)" || die "cannot look up $BASE in runner/core/jobspec/compat.json"
read -r TORCH CUDA PY PY_BIN <<<"$carries"
[ "$PY" = 3.11 ] || die "$BASE carries python $PY; a stand-in can carry only Debian bookworm's 3.11 (no other CPython can be had without a registry)"
[ "${CUDA%%.*}" = 12 ] || die "$BASE carries CUDA $CUDA; this script knows a CUDA 12 compiler only (Debian trixie's nvidia-cuda-toolkit)"
NVCC_DEBS=(nvidia-cuda-toolkit nvidia-cuda-dev libcudart12 libnvvm4 libcub-dev libthrust-dev libcu++-dev)

"$here/provision-docker.sh" >/dev/null
if "${SUDO[@]}" docker image inspect "$BASE" >/dev/null 2>&1; then
    what="$("${SUDO[@]}" docker image inspect --format '{{index .Config.Labels "runner.stand-in.for"}}' "$BASE")"
    if [ -n "$what" ]; then log "$BASE already exists (a stand-in); nothing to do"; else log "$BASE already exists (the real base); nothing to do"; fi
    exit 0
fi
"$here/make-test-base.sh"

# ---------------------------------------------------------------- downloads (cached)
wheels="$CACHE/wheels/torch-$TORCH-cp311"
debs="$CACHE/debs"
mkdir -p "$wheels" "$debs"
if [ ! -f "$wheels/.complete" ]; then
    log "downloading torch==$TORCH (its CUDA build) and its runtime wheels from PyPI into $wheels"
    platforms=()
    for n in $(seq 28 -1 17); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    "$PYTHON" -m pip download "torch==$TORCH" --python-version 3.11 --implementation cp \
        --only-binary=:all: "${platforms[@]}" --platform manylinux2014_x86_64 --platform any \
        -d "$wheels" --progress-bar off --quiet
    touch "$wheels/.complete"
fi
if [ ! -f "$debs/.complete" ]; then
    log "downloading Debian trixie's CUDA 12 toolkit (.debs, about 1 GB) into $debs"
    apt_dir="$(mktemp -d /var/tmp/runner-apt.XXXXXX)"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie main non-free" >"$apt_dir/sources.list"
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/nonexistent
              -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o APT::Sandbox::User=root)
    "${SUDO[@]}" apt-get "${apt_opts[@]}" update -qq
    (cd "$debs" && "${SUDO[@]}" apt-get "${apt_opts[@]}" download -qq "${NVCC_DEBS[@]}")
    "${SUDO[@]}" rm -rf "$apt_dir"
    touch "$debs/.complete"
fi

# ---------------------------------------------------------------- context
ctx="$(mktemp -d /var/tmp/runner-stand-in.XXXXXX)"
trap '"${SUDO[@]}" rm -rf "$ctx"' EXIT
stage="$ctx/stage"
mkdir -p "$stage"
for p in "${NVCC_DEBS[@]}"; do
    deb=("$debs/${p}_"*.deb)
    [ -f "${deb[0]}" ] || die "$debs lacks the .deb of $p; delete $debs/.complete and run again"
    dpkg-deb -x "${deb[0]}" "$stage"
done
NVCC_VERSION="$(dpkg-deb -f "$(ls "$debs"/nvidia-cuda-toolkit_*.deb)" Version | sed 's/~.*//')"
# The layout of an NVIDIA toolkit (bin, nvvm, include, lib64), as nvidia/cuda devel images have it
# at /usr/local/cuda: torch's and DeepSpeed's builders look for exactly that. Debian spreads the
# same files over /usr; only the headers and the shared runtime are taken, not 2.5 GB of static libraries.
cuda="$ctx/cuda"
mkdir -p "$cuda/bin/crt" "$cuda/nvvm/bin" "$cuda/nvvm/lib64" "$cuda/nvvm/libdevice" "$cuda/include" "$cuda/lib64/stubs"
tk="$stage/usr/lib/nvidia-cuda-toolkit"
cp -a "$tk/bin/nvcc" "$tk/bin/crt/link.stub" "$tk/bin/crt/prelink.stub" "$cuda/bin/" && mv "$cuda/bin/"*.stub "$cuda/bin/crt/"
for tool in ptxas fatbinary nvlink cudafe++ bin2c cuobjdump nvdisasm nvprune cu++filt; do cp -a "$stage/usr/bin/$tool" "$cuda/bin/"; done
cp -a "$tk/bin/cicc" "$cuda/nvvm/bin/"
cp -a "$tk/libdevice/." "$cuda/nvvm/libdevice/"
cp -a "$stage/usr/lib/x86_64-linux-gnu/libnvvm.so"* "$cuda/nvvm/lib64/"
cp -a "$stage/usr/include/." "$cuda/include/"
# nvcc links programs with the static runtime unless told otherwise; extensions use the shared one.
cp -a "$stage/usr/lib/x86_64-linux-gnu/libcudart.so"* "$stage/usr/lib/x86_64-linux-gnu/libcudart_static.a" \
    "$stage/usr/lib/x86_64-linux-gnu/libcudadevrt.a" "$cuda/lib64/"
cp -a "$stage/usr/lib/x86_64-linux-gnu/stubs/libcuda.so" "$cuda/lib64/stubs/"
cat >"$cuda/bin/nvcc.profile" <<'EOF'
TOP              = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
LD_LIBRARY_PATH += $(TOP)/lib64:$(TOP)/nvvm/lib64:
PATH            += $(TOP)/nvvm/bin:$(_HERE_):
INCLUDES        +=  "-I$(TOP)/include" $(_SPACE_)
LIBRARIES        =+ $(_SPACE_) "-L$(TOP)/lib64/stubs" "-L$(TOP)/lib64"
CUDAFE_FLAGS    +=
PTXAS_FLAGS     +=
EOF
rm -rf "$stage"
ln "$wheels"/*.whl "$ctx/" 2>/dev/null || cp "$wheels"/*.whl "$ctx/"

differs="Debian bookworm, not Ubuntu; Python $PY from Debian at $PY_BIN (a link to /usr/bin/python3.11), not conda, torch in /usr/local/lib/python3.11/dist-packages; nvcc and CUDA headers $NVCC_VERSION (Debian trixie) at /usr/local/cuda, not $CUDA; no cuDNN headers"
cat >"$ctx/Dockerfile" <<EOF
# The stand-in for $BASE: see scripts/make-gpu-stand-in.sh.
FROM $TEST_BASE AS install
COPY *.whl /tmp/wheels/
RUN python3 -m pip install --break-system-packages --no-index --no-cache-dir --find-links /tmp/wheels \\
        torch==$TORCH \\
 && python3 -c "import torch; assert torch.version.cuda == '$CUDA', torch.version.cuda"

FROM $TEST_BASE
COPY --from=install /usr/local/lib/python3.11/dist-packages /usr/local/lib/python3.11/dist-packages
COPY --from=install /usr/local/bin /usr/local/bin
COPY cuda/ /usr/local/cuda-$NVCC_VERSION/
RUN ln -s cuda-$NVCC_VERSION /usr/local/cuda \\
 && mkdir -p /opt/conda/bin \\
 && ln -s /usr/bin/python3.11 $PY_BIN \\
 && ln -s python /opt/conda/bin/python3 \\
 && mkdir -p /workspace
ENV PATH=/opt/conda/bin:/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64 \\
    NVIDIA_VISIBLE_DEVICES=all \\
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \\
    PYTORCH_VERSION=$TORCH
LABEL runner.stand-in.for="$BASE" \\
      runner.stand-in.differs="$differs" \\
      org.opencontainers.image.title="stand-in for $BASE (not the real image)" \\
      org.opencontainers.image.description="Made by runner's scripts/make-gpu-stand-in.sh for building and testing without a registry; never ship an image built on it."
WORKDIR /workspace
EOF

log "docker build $BASE (stand-in) from $TEST_BASE, torch==$TORCH, nvcc $NVCC_VERSION; network off"
t0=$(date +%s)
"${SUDO[@]}" docker build --network none --quiet -t "$BASE" "$ctx" >/dev/null

# It must do what the real base is used for: import torch's CUDA build and compile CUDA code.
"${SUDO[@]}" docker run --rm --network none "$BASE" bash -euc '
    python -c "import torch, torch.utils.cpp_extension as e; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"CUDA_HOME\", e.CUDA_HOME)"
    printf "__global__ void k(float *x) { x[threadIdx.x] *= 2.0f; }\nint main() { return 0; }\n" >/tmp/k.cu
    nvcc -arch=sm_80 -o /tmp/k /tmp/k.cu && echo "nvcc $(nvcc --version | sed -n "s/.*release \([0-9.]*\).*/\1/p") compiles for sm_80"
' >&2 || {
    "${SUDO[@]}" docker rmi "$BASE" >/dev/null  # ours, just built: a broken stand-in must not stay
    die "$BASE was built but does not import torch or compile CUDA code; removed it again"
}
size="$("${SUDO[@]}" docker image inspect --format '{{.Size}}' "$BASE")"
log "built $BASE (stand-in, $((size / 1000000)) MB, $(($(date +%s) - t0)) s)"
