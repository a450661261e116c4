# Rendered by `runner build default` from images/default.yaml; do not edit by hand.
# Context: offline_wheels/default/ (`runner wheels default`) and dist/runner-*.whl.
# Every RUN step is built with the network off: what is not in the context is not there.

# --- stage 1: the dependency layer, installed from the wheelhouse only ----------------------
FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel AS deps
ENV PIP_NO_INDEX=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY offline_wheels/default/ /tmp/wheels/
RUN /opt/conda/bin/python -m venv --system-site-packages /opt/venv \
 && /opt/venv/bin/python -m pip install --no-index --no-deps --require-hashes \
        --find-links /tmp/wheels -r /tmp/wheels/requirements.txt \
 && /opt/venv/bin/python -c "import torch, transformers, peft, accelerate, datasets"

# --- stage 2: the image: base + dependency layer + runner itself (last, so it stays thin) -----
FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel
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
