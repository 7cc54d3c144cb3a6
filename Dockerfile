# syntax=docker/dockerfile:1
# Images of avr-k8s, one per target:
#   docker build --target runtime  -t ghcr.io/agentvoiceresponse/avr-k8s-runtime:0.1.0 .
#   docker build --target operator -t ghcr.io/agentvoiceresponse/avr-k8s-operator:0.1.0 .
# Both run as the unprivileged user 10001 and need nothing writable but /tmp.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: the wheel, then the wheel and its dependencies in a virtual environment --------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# a C compiler for the compiled data planes (runtime/server/_relay.c, runtime/reference/_echo.c); only this stage has it
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY runtime/ runtime/
COPY operator/ operator/
COPY cluster/ cluster/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install /wheels/*.whl \
    && /opt/venv/bin/pip uninstall --yes pip setuptools wheel

# --- base: the interpreter and the virtual environment, nothing to build with ---------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONSAFEPATH=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN python -m pip uninstall --yes --no-cache-dir pip setuptools wheel \
    && groupadd --system --gid 10001 avr \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin avr
COPY --from=build /opt/venv /opt/venv
WORKDIR /tmp

# --- operator: `avr-operator run` (liveness on 8080, metrics on 9090) -----------------------------------
FROM base AS operator
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["avr-operator"]
CMD ["run"]

# --- runtime: the worker, `avr-runtime serve` (AudioSocket on 5001, HTTP on 3000) -----------------------
FROM base AS runtime
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libopus0 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*
USER 10001:10001
EXPOSE 5001 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('HTTP_PORT', '3000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["avr-runtime"]
CMD ["serve"]
