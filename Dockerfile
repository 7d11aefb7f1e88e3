# rnntext serving image: BentoML + ONNX Runtime, the committed exported_models/, no torch.
#
#   docker build -t rnntext:gpu .                          # default: CUDA 12 runtime + onnxruntime-gpu
#   docker build -t rnntext:cpu --build-arg VARIANT=cpu .  # CPU only: python slim + onnxruntime
#   docker run --gpus all -p 3000:3000 rnntext:gpu         # GPU (needs the NVIDIA container toolkit)
#   docker run -p 3000:3000 -e RNNTEXT_PROVIDER=cpu rnntext:cpu
#
# RNNTEXT_PROVIDER=auto (default) takes the CUDA execution provider when onnxruntime-gpu finds a GPU and falls
# back to CPU otherwise; the provider in use is logged at start and reported by GET /info. All RNNTEXT_*
# settings (docs/serving.md) can be passed with -e. Build from the project root (it copies serving/ and
# exported_models/). onnxruntime-gpu 1.2x wheels on PyPI are built for CUDA 12 + cuDNN 9, hence the base.
ARG VARIANT=gpu

FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 AS base-gpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV ORT_PACKAGE=onnxruntime-gpu

FROM python:3.12-slim AS base-cpu
ENV ORT_PACKAGE=onnxruntime

FROM base-${VARIANT}
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 BENTOML_DO_NOT_TRACK=True BENTOML_HOME=/tmp/bentoml
RUN python3 -m venv /opt/venv \
 && pip install --no-cache-dir "bentoml==1.4.39" "numpy>=1.24,<3" "redis>=5,<9" "${ORT_PACKAGE}>=1.17,<2"
WORKDIR /app
COPY bentofile.yaml ./
COPY serving/ serving/
COPY exported_models/ exported_models/
RUN useradd --create-home --uid 10001 app
USER app
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s CMD python3 -c \
  "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=2)"
# one worker by default (in-process session store); with RNNTEXT_REDIS_URL set, RNNTEXT_WORKERS may be > 1
CMD ["bentoml", "serve", "--host", "0.0.0.0", "--port", "3000"]
