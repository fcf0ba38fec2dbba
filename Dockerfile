# syntax=docker/dockerfile:1.7
# optimodel images. One Dockerfile, four targets:
#
#   docker build --target operator -t ghcr.io/optimodel/optimodel-operator:0.1.0 .
#       the kopf operator and the Triton pods' repository-staging init container
#       (`optimodel operator`, `optimodel stage-repository`): slim Python, no torch, no CUDA.
#   docker build --target builder -t ghcr.io/optimodel/optimodel-builder:0.1.0 .
#       the GPU build Job (`optimodel build`): TensorRT + CUDA from NVIDIA's image, plus the
#       `builder` extra (torch, ONNX, ONNX Runtime, transformers). Its TensorRT must be the
#       one of the Triton image that serves the engines (tensorrt:25.01 <-> tritonserver:25.01).
#   docker build --target builder-cpu -t ghcr.io/optimodel/optimodel-builder-cpu:0.1.0 .
#       the build Job for clusters without GPUs: no TensorRT, the ONNX Runtime path only.
#   docker build --target triton-local -t ghcr.io/optimodel/tritonserver-cpu:0.1.0 .
#       a CPU stand-in for NVIDIA's Triton image: the real tritonserver of the nvidia-pytriton
#       wheel (Python backend only), serving the builder's `python` repository layout
#       (operator setting OPTIMODEL_TRITON_REPOSITORY_LAYOUT=python, chart triton.repositoryLayout).
#
# All run as a numeric non-root user and work with a read-only root filesystem (HOME=/tmp).
#
# Air-gapped builds: put the wheels (`pip wheel -w DIR ...`) where RUN steps see them at
# /wheelhouse and pass --build-arg PIP_NO_INDEX=1; e.g. buildah bud -v DIR:/wheelhouse:ro
# (hack/images.py builds this way). Without them pip uses the package index as usual.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:25.01-py3
ARG OPTIMODEL_VERSION=0.1.0

# --- the project as a wheel (no source tree in the final images) --------------------------------
FROM ${PYTHON_IMAGE} AS wheel
ARG OPTIMODEL_VERSION
ARG PIP_NO_INDEX=0
ARG PIP_FIND_LINKS=/wheelhouse
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
ARG PIP_NO_INDEX=0
ARG PIP_FIND_LINKS=/wheelhouse
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
# The `stage` extra: staging reads s3:// (fsspec, s3fs) and rewrites config.pbtxt through
# Triton's protobuf (tritonclient[grpc], protobuf). No torch, no CUDA.
# Dependencies first, from the image's requirements list alone (generated from pyproject.toml):
# this layer is reused until they change.
COPY requirements/stage.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --no-deps "/wheels/optimodel-${OPTIMODEL_VERSION}-py3-none-any.whl" \
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
# `fp8`: ModelOpt's ONNX quantizer, for FP8 Q/DQ candidates.
RUN pip install --no-cache-dir "/wheels/optimodel-${OPTIMODEL_VERSION}-py3-none-any.whl[builder,fp8]" \
    && rm -rf /wheels \
    && python3 -c "import tensorrt, onnx, onnxruntime, torch, modelopt.onnx.quantization; print('tensorrt', tensorrt.__version__)"
# UID of the containers the operator creates (OPTIMODEL_RUN_AS_USER, chart value workloads.runAsUser).
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["optimodel"]
CMD ["build", "--help"]

# --- builder-cpu: the `builder` extra on plain Python; ONNX Runtime is the only target ----------------
FROM ${PYTHON_IMAGE} AS builder-cpu
ARG OPTIMODEL_VERSION
ARG PIP_NO_INDEX=0
ARG PIP_FIND_LINKS=/wheelhouse
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
# Dependencies first, from the image's requirements list alone (generated from pyproject.toml):
# this layer is reused until they change.
COPY requirements/builder.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --no-deps "/wheels/optimodel-${OPTIMODEL_VERSION}-py3-none-any.whl" \
    && rm -rf /wheels \
    && python3 -c "import onnx, onnxruntime, torch, transformers; print('onnxruntime', onnxruntime.__version__)"
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["optimodel"]
CMD ["build", "--help"]

# --- triton-local: the pytriton wheel's tritonserver (CPU, Python backend) as `tritonserver` --------
FROM ${PYTHON_IMAGE} AS triton-local
ARG OPTIMODEL_VERSION
ARG PIP_NO_INDEX=0
ARG PIP_FIND_LINKS=/wheelhouse
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OPTIMODEL_CACHE=/opt/optimodel \
    HOME=/tmp
# Dependencies first, from the image's requirements list alone (generated from pyproject.toml):
# this layer is reused until they change.
COPY requirements/triton-local.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY --from=wheel /wheels /wheels
# The Python backend directory is assembled at build time (read-only root filesystem at run
# time); `tritonserver` on PATH takes NVIDIA's binary's arguments, so the operator's Deployment
# is the same for both images.
RUN pip install --no-cache-dir --no-deps "/wheels/optimodel-${OPTIMODEL_VERSION}-py3-none-any.whl" \
    && rm -rf /wheels \
    && optimodel tritonserver --prepare-only \
    && printf '#!/bin/sh\nexec optimodel tritonserver "$@"\n' > /usr/local/bin/tritonserver \
    && chmod 0755 /usr/local/bin/tritonserver
USER 1000:1000
WORKDIR /tmp
EXPOSE 8000 8001 8002
ENTRYPOINT ["tritonserver"]
CMD ["--help"]
