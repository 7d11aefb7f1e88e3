# syntax=docker/dockerfile:1
# rnntext serving image: BentoML + ONNX Runtime, the committed models in its BentoML model store, no torch.
#
#   docker build -t rnntext:gpu .                          # default: CUDA 13 runtime + onnxruntime-gpu
#   docker build -t rnntext:cpu --build-arg VARIANT=cpu .  # CPU only: python slim + onnxruntime
#   docker run --gpus all -p 3000:3000 rnntext:gpu         # GPU (needs the NVIDIA container toolkit)
#   docker run -p 3000:3000 -e RNNTEXT_PROVIDER=cpu rnntext:cpu
#
# RNNTEXT_PROVIDER=auto (default) takes the CUDA execution provider when onnxruntime-gpu finds a GPU and falls
# back to CPU otherwise; the provider in use is logged at start and reported by GET /info. All RNNTEXT_*
# settings (docs/serving.md) can be passed with -e. Build from the project root (it copies requirements/serve.lock,
# runtime/ and serving/, and registers exported_models/ in the image's BentoML model store, as `make register` does;
# RUN --mount needs BuildKit, the default builder of Docker 23+). onnxruntime-gpu wheels on PyPI from 1.27 on are
# built for CUDA 13 + cuDNN 9 (the locked version is in serve.lock; the same set as requirements/serve-gpu.lock),
# hence the base; the host needs an NVIDIA driver that supports CUDA 13. Other models without a rebuild:
# -v /path/to/exported_models:/models -e RNNTEXT_MODELS=/models. The Bento route: docs/deploy.md.
ARG VARIANT=gpu

FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 AS base-gpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV ORT_PACKAGE=onnxruntime-gpu

FROM python:3.12-slim AS base-cpu
ENV ORT_PACKAGE=onnxruntime

FROM base-${VARIANT}
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 BENTOML_DO_NOT_TRACK=True BENTOML_HOME=/tmp/bentoml
WORKDIR /app
# every version from the serving lock (make lock); the GPU variant takes onnxruntime-gpu of the locked version
COPY requirements/serve.lock requirements/
RUN python3 -m venv /opt/venv \
 && sed "s/^onnxruntime==/${ORT_PACKAGE}==/" requirements/serve.lock > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY bentofile.yaml ./
COPY runtime/ runtime/
COPY serving/ serving/
RUN useradd --create-home --uid 10001 app
USER app
# the models are read from the build context, not copied in as files, so the image holds them once (in the store);
# without exported_models/ beside it, the service serves the store's latest rnntext-classifier/-generator
RUN --mount=type=bind,source=exported_models,target=/app/exported_models \
    python3 -m serving.model_store register
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s CMD python3 -c \
  "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=2)"
# one worker by default (in-process session store); with RNNTEXT_REDIS_URL set, RNNTEXT_WORKERS may be > 1
CMD ["bentoml", "serve", "--host", "0.0.0.0", "--port", "3000"]
