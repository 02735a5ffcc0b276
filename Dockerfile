# syntax=docker/dockerfile:1.7
# The llm-proxy image. Stage one fetches every dependency at the version requirements.lock pins,
# each file checked against the lock's hashes, and builds the project's own wheel (compilers live
# only there); the runtime stage installs those wheels offline, hash-checked again, and carries no
# compiler, no pip cache and no source tree. One image runs every process:
#   llm-proxy server | dispatcher | worker | migrate | manage ...
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, from the lock alone: this layer is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels -r requirements.lock
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY proxy ./proxy
COPY dispatcher ./dispatcher
COPY admin ./admin
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="llm-proxy" \
      org.opencontainers.image.description="LLM API gateway: token auth, streaming forwarding, caching, rate limits, usage records" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 llmproxy \
    && useradd --system --uid 10001 --gid llmproxy --home-dir /var/lib/llm-proxy \
       --create-home --shell /usr/sbin/nologin llmproxy \
    && install -d -o llmproxy -g llmproxy -m 0750 /var/spool/llm-proxy
# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
# The locked set goes in hash-checked; the project then with --no-deps, so nothing unlocked can.
RUN --mount=type=bind,from=build,source=/src/requirements.lock,target=/tmp/requirements.lock \
    --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/dist,target=/dist \
    pip install --no-index --find-links=/wheels --require-hashes -r /tmp/requirements.lock \
    && pip install --no-index --no-deps /dist/*.whl
WORKDIR /var/lib/llm-proxy
USER 10001:10001
# In a container the server must listen on every interface; PORT is what probes and nginx use.
ENV HOST=0.0.0.0 \
    PORT=8080
EXPOSE 8080
# /live does no I/O: it says the process serves HTTP, not that Postgres or Redis are reachable.
# The dispatcher and worker containers override or disable this check (see compose/).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/live', timeout=2)"]
ENTRYPOINT ["llm-proxy"]
CMD ["server"]
