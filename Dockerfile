# Rendered by `runner build default` from images/default.yaml; do not edit by hand.
# Context: offline_wheels/default/ (`runner wheels default`) and dist/runner-*.whl.
# Every RUN step is built with the network off: what is not in the context is not there.

# --- stage 1: the dependency layer, installed from the wheelhouse only ----------------------
FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-devel AS deps
ENV PIP_NO_INDEX=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY offline_wheels/default/ /tmp/wheels/
RUN /opt/conda/bin/python -m venv --system-site-packages /opt/venv \
 && /opt/venv/bin/python -m pip install --no-index --no-deps --require-hashes \
        --find-links /tmp/wheels -r /tmp/wheels/requirements.txt \
 && /opt/venv/bin/python -c "import torch, transformers, peft, accelerate, datasets"
# DeepSpeed's ops, compiled now by the base's nvcc for the GPUs the spec lists (compiling needs no
# GPU): a job's first step loads them instead of compiling them in every new container. Host code is
# compiled for x86-64-v3 (AVX2), not for this build machine's CPU (-march=native, AVX-512 where it
# has it), so that cpu_adam runs on every server the image is carried to.
RUN printf '%s\n' '#!/bin/bash' 'a=("$@"); for i in "${!a[@]}"; do case "${a[i]}" in -march=native) a[i]=-march=x86-64-v3;; -D__AVX512__) a[i]=-D__AVX256__;; esac; done; exec c++ "${a[@]}"' >/usr/local/bin/portable-c++ \
 && chmod 755 /usr/local/bin/portable-c++ \
 && CXX=/usr/local/bin/portable-c++ DS_ACCELERATOR=cuda DS_ENABLE_NINJA=1 DS_BUILD_OPS=0 \
    DS_BUILD_FUSED_ADAM=1 \
    DS_BUILD_CPU_ADAM=1 \
    TORCH_CUDA_ARCH_LIST='8.0 8.6 8.9 9.0' \
    /opt/venv/bin/python -m pip install --no-index --no-deps --no-build-isolation --use-pep517 --require-hashes \
        --find-links /tmp/wheels -r /tmp/wheels/sdists.txt \
 && /opt/venv/bin/python -c "import sys; from deepspeed.git_version_info import installed_ops as ops; missing = [o for o in sys.argv[1:] if not ops.get(o)]; sys.exit(f'DeepSpeed did not compile {missing}' if missing else 0)" \
        fused_adam cpu_adam

# --- stage 2: the image: base + dependency layer + runner itself (last, so it stays thin) -----
FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-devel
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HUB_DISABLE_UPDATE_CHECK=1 \
    DO_NOT_TRACK=1 \
    WANDB_MODE=disabled \
    TOKENIZERS_PARALLELISM=false \
    PYTHONUNBUFFERED=1 \
    HF_DATASETS_DISABLE_PROGRESS_BARS=1 \
    TRANSFORMERS_NO_ADVISORY_WARNINGS=1 \
    BITSANDBYTES_NOWELCOME=1 \
    DS_BUILD_OPS=0 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HOME=/tmp/hf-home \
    MPLCONFIGDIR=/tmp/matplotlib \
    PIP_NO_INDEX=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# No setuid or setgid binary stays (su, passwd, mount, ...): nothing in a job's container can
# gain privileges, whatever the engine's options.
RUN (getent group 1000 || groupadd --gid 1000 runner) \
 && (getent passwd 1000 || useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash runner) \
 && mkdir -p /workspace && chmod 1777 /workspace \
 && find / -xdev -perm /6000 -type f -exec chmod ug-s {} + \
 && test -z "$(find / -xdev -perm /6000 -type f)"
COPY --from=deps /opt/venv /opt/venv
COPY dist/ /tmp/runner/
RUN /opt/venv/bin/python -m pip install --no-index --no-deps /tmp/runner/*.whl \
 && /opt/venv/bin/python -m pip freeze > /opt/venv/pip-freeze.txt \
 && rm -rf /tmp/runner
USER 1000:1000
WORKDIR /workspace
CMD ["runner", "env"]
