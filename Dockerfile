# One image for every pipeline step and worker:
#   docker run odir step ingest --data-root s3://bucket/odir      (= python -m steps.ingest ...)
#   docker run odir prefect worker start --pool gpu
#   docker run odir odir full --profile demo
# CPU (slim) by default. GPU workers: a CUDA base and CUDA wheels, e.g.
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t odir:gpu .
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH TORCH_HOME=/opt/torch
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python3 -m venv /opt/venv && mkdir -p /opt/torch
WORKDIR /src
# torch first, from the index the build argument names (CPU wheels here, CUDA wheels for the GPU image)
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch>=2.4,<3" "torchvision>=0.19,<1"
COPY pyproject.toml README.md ./
COPY components ./components
COPY steps ./steps
COPY flows ./flows
# the project itself; its dependency ranges live in pyproject.toml
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[server]"
# ImageNet weights of the study's backbones, baked in when the build has network, so that workers in
# air-gapped clusters need no download (without network the build goes on and says so)
RUN python -c "import torchvision as tv; [tv.models.get_model_weights(n).DEFAULT.get_state_dict(progress=False) for n in ('resnet18', 'efficientnet_b0')]" \
    || echo "no network: ImageNet weights not baked in (weights: imagenet will need TORCH_HOME populated)"

FROM ${BASE_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TORCH_HOME=/opt/torch \
    ODIR_HOME=/app \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/torch /opt/torch
RUN groupadd --gid 10001 odir && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin odir
WORKDIR /app
# the sources again at /app: Prefect deployments name their entrypoints by file (flows/odir.py:odir)
COPY --chown=10001:10001 pyproject.toml prefect.yaml ./
COPY --chown=10001:10001 components ./components
COPY --chown=10001:10001 steps ./steps
COPY --chown=10001:10001 flows ./flows
COPY --chown=10001:10001 configs ./configs
COPY --chown=10001:10001 infra/docker/entrypoint.sh /usr/local/bin/odir-entrypoint
RUN mkdir -p /app/mlruns /app/.odir && chown -R 10001:10001 /app
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/odir-entrypoint"]
CMD ["odir", "--help"]
