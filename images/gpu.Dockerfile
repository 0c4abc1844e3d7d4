# CUDA image for training and generation: `cehrgpt` with the torch extra, kfp without its dependencies.
# Build from the repository root: docker build -f images/gpu.Dockerfile -t ghcr.io/cehrgpt/cehrgpt-gpu:0.1.0 .

# --- build the project wheel (no compiler or sources in the runtime image) ---
FROM python:3.11.14-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir build==1.3.0 && python -m build --wheel --outdir /wheels .

# --- runtime: the CUDA user-space libraries come with the torch wheel; the base image brings the driver hooks ---
FROM nvidia/cuda:12.8.1-base-ubuntu22.04
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/cehrgpt/venv
ENV PATH=/opt/cehrgpt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
COPY --from=wheel /wheels /wheels
COPY images/kfp-runtime.txt images/constraints.txt /tmp/
# versions pinned by constraints.txt and kfp-runtime.txt
# hadolint ignore=DL3013
RUN WHEEL="$(ls /wheels/cehrgpt_pipelines-*.whl)" \
 && pip install --no-cache-dir -c /tmp/constraints.txt "${WHEEL}[torch,analysis]" "torch==2.13.0" \
 && pip install --no-cache-dir --no-deps -r /tmp/kfp-runtime.txt \
 && rm -rf /wheels /tmp/kfp-runtime.txt /tmp/constraints.txt
RUN useradd --create-home --uid 1000 cehrgpt
USER 1000
WORKDIR /home/cehrgpt
