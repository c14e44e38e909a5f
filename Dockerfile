# syntax=docker/dockerfile:1
# dicomweb-proxy container image (SPEC section 7).
#   docker build -t dicomweb-proxy .
#   docker run -p 8080:8080 -e DICOMWEB_PROXY_UPSTREAM_URL=http://pacs:8042/dicom-web dicomweb-proxy
# Configuration is by DICOMWEB_PROXY_* environment variables (or flags after the image name).

ARG PYTHON_VERSION=3.12

# -- stage 1: build the wheel and the wheels of its dependencies ------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip wheel --wheel-dir /wheels '.[codings,google,azure,aws]'

# -- stage 2: slim runtime, no compiler, no build tools ---------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# A fixed UID/GID so Kubernetes runAsNonRoot / runAsUser / fsGroup can match it.
RUN groupadd --system --gid 10001 dicomweb \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/cache/dicomweb-proxy --shell /usr/sbin/nologin dicomweb
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels 'dicomweb-proxy[codings,google,azure,aws]' \
    && mkdir -p /var/cache/dicomweb-proxy \
    && chown 10001:10001 /var/cache/dicomweb-proxy

# Listen on every interface inside the container; cache, spool and dead letter live in
# the data directory; one worker per CPU the container may use (cgroup quota aware).
ENV DICOMWEB_PROXY_LISTEN=0.0.0.0:8080 \
    DICOMWEB_PROXY_DATA_DIR=/var/cache/dicomweb-proxy \
    DICOMWEB_PROXY_WORKERS=auto
VOLUME ["/var/cache/dicomweb-proxy"]
WORKDIR /var/cache/dicomweb-proxy
EXPOSE 8080
USER 10001:10001

# No curl in the image: the stdlib is enough.  The port follows DICOMWEB_PROXY_LISTEN;
# ProxyHandler({}) ignores HTTP(S)_PROXY meant for the upstream.  Non-2xx raises -> exit 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; port = os.environ.get('DICOMWEB_PROXY_LISTEN', ':8080').rpartition(':')[2]; u.build_opener(u.ProxyHandler({})).open(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

# Exec form: the proxy is PID 1 and receives SIGTERM itself (graceful shutdown).
ENTRYPOINT ["dicomweb-proxy"]
CMD ["serve"]
