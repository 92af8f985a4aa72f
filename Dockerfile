# One image for every pipeline step and worker: `python -m steps.<name> ...`, `odir ...`, `prefect worker start ...`.
# CPU by default; for GPU workers build with a CUDA PyTorch base, e.g.
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime -t odir:gpu .
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY components ./components
COPY steps ./steps
COPY flows ./flows
RUN pip install --no-cache-dir .

FROM ${BASE_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true
COPY --from=build /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 odir
WORKDIR /app
COPY --chown=odir:odir configs ./configs
USER odir
ENTRYPOINT ["odir"]
CMD ["--help"]
