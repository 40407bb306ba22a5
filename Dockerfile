# The trainer in a CUDA container:  make docker-build && make docker-train
#
#   docker run --rm --gpus all --stop-timeout 120 --env-file .env \
#     -v "$PWD/data:/app/data" -v "$PWD/runs:/app/runs" \
#     -v "$HOME/.cache/huggingface:/home/job/.cache/huggingface" -v /etc/localtime:/etc/localtime:ro \
#     -p 127.0.0.1:9838:9838 job:latest train --max-iters 200
#
# Several GPUs: -e JOB_NPROC=8 --shm-size 1g (NCCL's shared memory); `job train` then starts torchrun
# itself, one process per GPU, inside the container (docs/operations.md, "Several GPUs and machines").
#
# tini is the entrypoint (PID 1), so SIGTERM from `docker stop`, Kubernetes or a RunPod/vast.ai
# template reaches Python (which checkpoints and exits 75) without `--init`, and torch.compile's
# worker processes get reaped. Give `docker stop` time to finish the step and write the
# checkpoint: --stop-timeout 120 (or `docker stop -t 120`); docker's default of 10 s can SIGKILL
# a 124M run mid-checkpoint (the previous checkpoint survives; up to ckpt_interval steps are lost).

# The CUDA variant of the torch wheel and a base image of the same CUDA version (docs/gpu.md,
# "Image variants"): cu130 (default) needs driver >= 580 and runs Turing to Blackwell; cu126 runs on
# driver >= 525, Maxwell to Hopper (an RTX 4070 runs its sm_86 code):
#   make docker-build CUDA=cu126
# scripts/gpu/check_torch_cuda.py (make lint) fails when torch's pin and the variant are not a
# published pair, or the base image is another CUDA.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04
ARG TORCH_CUDA=cu130

# ---- build: a venv with every dependency, plus tiktoken's gpt2 files ----------------------------
FROM ${CUDA_IMAGE} AS build
ARG TORCH_CUDA
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# DL3008 (unpinned apt packages) ignored: the base image tag fixes the Ubuntu release, and the
# archive drops old package versions, so exact apt pins would break the build within weeks.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY requirements.txt requirements-trackers.txt ./
# torch: the version requirements.txt pins, as the CUDA build from PyTorch's own index; every
# other package from the same exact pins as the local venv, the optional trackers' too
# (TensorBoard, W&B: JOB_TRACKERS turns them on).
RUN torch_pin=$(grep -E '^torch==' requirements.txt) \
 && /opt/venv/bin/pip install "$torch_pin" --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" \
 && grep -vE '^torch==' requirements.txt > /tmp/requirements-notorch.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements-notorch.txt -r requirements-trackers.txt
COPY pyproject.toml README.md ./
COPY job ./job
RUN /opt/venv/bin/pip install --no-deps . \
 && rm -rf /src/build /src/*.egg-info
# Bake GPT-2's BPE files into tiktoken's cache, so the container never needs the network for them.
# DL3064 ignored: it reads "TOKEN" in TIKTOKEN_CACHE_DIR as a secret; it is a cache path.
# hadolint ignore=DL3064
ENV TIKTOKEN_CACHE_DIR=/opt/tiktoken
RUN /opt/venv/bin/python -c "import tiktoken; assert tiktoken.get_encoding('gpt2').n_vocab == 50257"

# ---- runtime: the venv, a non-root user, the C toolchain torch.compile needs --------------------------------------------
# A -base CUDA image, not -runtime: the torch wheel brings its own cuBLAS, cuDNN and NCCL (the
# nvidia-* wheels), so -runtime's copies would only add gigabytes. The driver comes from the host
# through the NVIDIA container toolkit (--gpus all).
FROM ${CUDA_IMAGE}
# tini: PID 1 that forwards signals and reaps children. tzdata: stop_at is local time (mount the
# host's /etc/localtime, or set TZ). gcc, libc6-dev and python3-dev: torch.compile (inductor and
# Triton) builds C extensions at run time and fails on its first compiled step without a C
# compiler, libc's headers and Python.h (the GPU presets turn compile on).
# DL3008 ignored, as above: the Ubuntu release is pinned by the base image tag.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-dev gcc libc6-dev \
    tini tzdata \
 && rm -rf /var/lib/apt/lists/*
# UID/GID: match the host user that owns data/ and runs/ (make docker-build passes `id -u`).
ARG UID=1000
ARG GID=1000
# Ubuntu 24.04 images ship a user "ubuntu" holding 1000:1000; it gives way to ours.
RUN (userdel -r ubuntu 2>/dev/null || true) \
 && groupadd -g "${GID}" job \
 && useradd -l -m -u "${UID}" -g "${GID}" -s /bin/bash job \
 && mkdir -p /app/data /app/runs /home/job/.cache/huggingface \
 && chown -R job:job /app /home/job/.cache
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/tiktoken /opt/tiktoken
COPY scripts/ops/healthcheck.py /app/scripts/healthcheck.py
# JOB_METRICS_ADDR: inside the container the metrics server must listen on all interfaces, or a
# published port cannot reach it; publish it on the host's 127.0.0.1 only (-p 127.0.0.1:9838:9838).
# DL3064 ignored, as above: TIKTOKEN_CACHE_DIR is a path, not a secret.
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TIKTOKEN_CACHE_DIR=/opt/tiktoken \
    HF_HOME=/home/job/.cache/huggingface \
    JOB_METRICS_ADDR=0.0.0.0 \
    JOB_METRICS_PORT=9838
WORKDIR /app
# Numeric, so the host reads the files it writes as the same user (uid:gid of job above).
USER ${UID}:${GID}
VOLUME ["/app/data", "/app/runs", "/home/job/.cache/huggingface"]
EXPOSE 9838
# Data prep and torch.compile come before the metrics server: the start period covers them.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 \
  CMD ["python", "/app/scripts/healthcheck.py"]
# SIGTERM: the job finishes its step, writes a checkpoint and exits 75 (see --stop-timeout above).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "python", "-m", "job"]
CMD ["train"]
