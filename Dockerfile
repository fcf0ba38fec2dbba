# syntax=docker/dockerfile:1.7
# optimodel images. One Dockerfile, two targets:
#
#   docker build --target operator -t ghcr.io/optimodel/optimodel-operator:0.1.0 .
#       the kopf operator and the Triton pods' repository-staging init container
#       (`optimodel operator`, `optimodel stage-repository`): slim Python, no torch, no CUDA.
#   docker build --target builder -t ghcr.io/optimodel/optimodel-builder:0.1.0 .
#       the GPU build Job (`optimodel build`): TensorRT + CUDA from NVIDIA's image, plus the
#       `builder` extra (torch, ONNX, ONNX Runtime, transformers). Its TensorRT must be the
#       one of the Triton image that serves the engines (tensorrt:25.01 <-> tritonserver:25.01).
#
# Both run as a numeric non-root user and work with a read-only root filesystem (HOME=/tmp).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:25.01-py3
ARG OPTIMODEL_VERSION=0.1.0

# --- the project as a wheel (no source tree in the final images) --------------------------------
FROM ${PYTHON_IMAGE} AS wheel
ARG OPTIMODEL_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY optimodel/ optimodel/
COPY operator/ operator/
COPY builder/ builder/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && test -f "/wheels/optimodel-${OPTIMODEL_VERSION}-py3-none-any.whl"

# --- operator: core dependencies + what `optimodel stage-repository` imports ----------------------
FROM ${PYTHON_IMAGE} AS operator
ARG OPTIMODEL_VERSION
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
COPY --from=wheel /wheels /wheels
# The `stage` extra: staging reads s3:// (fsspec, s3fs) and rewrites config.pbtxt through
# Triton's protobuf (tritonclient[grpc], protobuf). No torch, no CUDA.
RUN pip install --no-cache-dir "/wheels/optimodel-${OPTIMODEL_VERSION}-py3-none-any.whl[stage]" \
    && rm -rf /wheels \
    && optimodel crd > /dev/null
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 9090
ENTRYPOINT ["optimodel"]
CMD ["operator", "--health-port", "8080"]

# --- builder: TensorRT + CUDA base, the `builder` extra ---------------------------------------------
FROM ${TENSORRT_IMAGE} AS builder
ARG OPTIMODEL_VERSION
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    HOME=/tmp
COPY --from=wheel /wheels /wheels
# The base image carries TensorRT's Python bindings; the import check fails the build if not.
RUN pip install --no-cache-dir "/wheels/optimodel-${OPTIMODEL_VERSION}-py3-none-any.whl[builder]" \
    && rm -rf /wheels \
    && python3 -c "import tensorrt, onnx, onnxruntime, torch; print('tensorrt', tensorrt.__version__)"
# UID of the containers the operator creates (OPTIMODEL_RUN_AS_USER, chart value workloads.runAsUser).
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["optimodel"]
CMD ["build", "--help"]
