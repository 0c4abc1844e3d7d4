# Slim CPU image: shard planning, gathering, privacy analyses, fidelity, the gate and the upload
# (unixODBC + Microsoft ODBC Driver 18 for SQL Server), with the Kubernetes client.
# Build from the repository root: docker build -f images/cpu.Dockerfile -t ghcr.io/cehrgpt/cehrgpt-cpu:0.1.0 .

FROM python:3.11.14-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir build==1.3.0 && python -m build --wheel --outdir /wheels .

FROM python:3.11.14-slim-bookworm
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Microsoft's repository for msodbcsql18 (ACCEPT_EULA is required by its package)
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl gnupg ca-certificates \
 && curl -fsSL https://packages.microsoft.com/keys/microsoft.asc | gpg --dearmor -o /usr/share/keyrings/microsoft-prod.gpg \
 && echo "deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/microsoft-prod.gpg] https://packages.microsoft.com/debian/12/prod bookworm main" \
      > /etc/apt/sources.list.d/mssql-release.list \
 && apt-get update \
 && ACCEPT_EULA=Y apt-get install -y --no-install-recommends msodbcsql18 unixodbc \
 && apt-get purge -y curl gnupg && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*
ENV PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
COPY --from=wheel /wheels /wheels
COPY images/kfp-runtime.txt images/constraints.txt /tmp/
# versions pinned by constraints.txt and kfp-runtime.txt
# hadolint ignore=DL3013
RUN WHEEL="$(ls /wheels/cehrgpt_pipelines-*.whl)" \
 && pip install --no-cache-dir -c /tmp/constraints.txt "${WHEEL}[analysis,db,k8s,gcs,s3]" \
 && pip install --no-cache-dir --no-deps -r /tmp/kfp-runtime.txt \
 && rm -rf /wheels /tmp/kfp-runtime.txt /tmp/constraints.txt
# the attribute-inference config at the path the pipelines default to
COPY analysis /opt/cehrgpt/analysis
RUN useradd --create-home --uid 1000 cehrgpt
USER 1000
WORKDIR /home/cehrgpt
