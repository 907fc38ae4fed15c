# fmmformer-pl on a CUDA PyTorch base. Build: make docker-build (passes your UID/GID).
# Run:   docker run --gpus all --ipc=host -v "$PWD/data:/app/data" -v "$PWD/logs:/app/logs" \
#            fmmformer-pl fit --config configs/quickstart.yaml
# --ipc=host (or --shm-size=8g) is needed by DataLoader workers: Docker's default /dev/shm
# is 64 MB. This image was never built on the project's machines (no Docker daemon there).
FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

ARG UID=1000
ARG GID=1000

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tini reaps the DataLoader worker processes and forwards SIGTERM/SIGINT to Python, so a
# scheduler's stop reaches Lightning. Ubuntu's tini is whatever the base release ships.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# --non-unique: the host's IDs may already exist in the base image.
RUN groupadd --non-unique --gid "${GID}" app \
    && useradd --non-unique --uid "${UID}" --gid "${GID}" --create-home --shell /bin/bash app

WORKDIR /app

# The package first (its layer survives edits to configs); the base image's CUDA torch
# already satisfies the `torch` requirement, so pip downloads no second torch.
COPY pyproject.toml README.md ./
COPY fmmformer_pl ./fmmformer_pl
COPY data_modules ./data_modules
# deepspeed (pinned in the [deepspeed] extra) builds from source: without build isolation, so
# its setup.py sees the base image's torch instead of downloading another; DS_BUILD_OPS=0
# precompiles no CUDA op (this runtime image has no nvcc; the configs use torch's AdamW, so
# ZeRO needs none of DeepSpeed's JIT-built optimisers). DL3013: ".[deepspeed]" is this package.
# hadolint ignore=DL3013
RUN DS_BUILD_OPS=0 pip install --no-cache-dir --no-build-isolation "deepspeed==0.19.8" \
    && pip install --no-cache-dir ".[deepspeed]" \
    && python -c "import fmmformer_pl, data_modules, lightning, deepspeed"

COPY cli.py ./
COPY configs ./configs
RUN mkdir -p /app/data /app/logs && chown app:app /app/data /app/logs

USER ${UID}:${GID}
VOLUME ["/app/data", "/app/logs"]

ENTRYPOINT ["tini", "--", "python", "cli.py"]
CMD ["--help"]
