# acore: the gateway (and, with another entrypoint, a worker) in one image.
#   docker build -t acore .
#   docker run -p 8000:8000 -e OPENAI_API_KEY acore
# Stage 1 compiles llama-cpp-python once (it has no wheel on PyPI) and builds acore's wheel;
# stage 2 is a slim runtime with those wheels and the CPU build of torch, run as a non-root user.
# The pins below are the ones scripts/setup installs (tests/integration/test_service_files.py checks).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY protocol protocol
COPY gateway gateway
COPY workers workers
COPY media media
RUN pip wheel --no-deps "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" -w /wheels \
 && pip wheel --no-deps . -w /wheels

FROM python:${PYTHON_VERSION}-slim
ARG TORCH_VERSION=2.13.0
# libgomp: llama.cpp's OpenMP runtime (build-essential stays in the build stage)
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 acore
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir --find-links /wheels "acore[llamacpp,embeddings]" \
 && rm -rf /wheels
USER acore
WORKDIR /home/acore
ENV PYTHONUNBUFFERED=1
EXPOSE 8000 5555
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)" || exit 1
ENTRYPOINT ["acore-gateway", "--host", "0.0.0.0"]
