# Images of avr-k8s, one per target:
#   docker build --target runtime  -t ghcr.io/agentvoiceresponse/avr-k8s-runtime:0.1.0 .
#   docker build --target operator -t ghcr.io/agentvoiceresponse/avr-k8s-operator:0.1.0 .
# Both run as the unprivileged user 10001 and need nothing writable but /tmp. Each holds only its own side:
# the runtime image has no Kubernetes client, the operator image no audio stack, and neither the dev cluster.
# PYTHON_IMAGE is any Debian bookworm image with Python 3.11 as `python` (the tests build one with debootstrap).

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: a wheel of one side, installed with its extra into a virtual environment ---------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# A C compiler for the compiled data planes (runtime/avr_runtime/server/_relay.c and reference/_echo.c), and
# Python's headers where the base image lacks them (Debian's python3); only this stage has them.
RUN headers=$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])") \
    && extra=$([ -f "$headers/Python.h" ] || echo python3-dev) \
    && apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev $extra \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/build
COPY pyproject.toml setup.py README.md ./
COPY runtime/ runtime/
COPY operator/ operator/

# setup.py's AVR_PACKAGES: a wheel of that package only (pip builds it with pyproject.toml's build requirements). The venv is made where the final image keeps it,
# since its scripts name their interpreter by absolute path.
FROM build AS build-runtime
RUN AVR_PACKAGES=avr_runtime /opt/build/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install "$(ls /wheels/*.whl)[runtime]" \
    && /opt/venv/bin/python -c "import avr_runtime.server._relay, avr_runtime.reference._echo" \
    && /opt/venv/bin/pip uninstall --yes pip setuptools wheel

FROM build AS build-operator
RUN AVR_PACKAGES=avr_operator /opt/build/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install "$(ls /wheels/*.whl)[operator]" \
    && /opt/venv/bin/pip uninstall --yes pip setuptools wheel

# --- base: the interpreter and the virtual environment, nothing to build with ---------------------------
# PYTHONSAFEPATH: the working directory is the writable /tmp, so `python -c` (the health check) never imports from it.
FROM ${PYTHON_IMAGE} AS base
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONSAFEPATH=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# pip is not needed at run time (the official Python images ship it; Debian's python3 does not)
RUN { ! python -m pip --version >/dev/null 2>&1 || python -m pip uninstall --yes --no-cache-dir pip setuptools wheel; } \
    && groupadd --system --gid 10001 avr \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin avr
WORKDIR /tmp

# --- operator: `avr-operator run` (liveness on 8080, metrics on 9090) -----------------------------------
FROM base AS operator
COPY --from=build-operator /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["avr-operator"]
CMD ["run"]

# --- runtime: the worker, `avr-runtime serve` (AudioSocket on 5001, HTTP on 3000) -----------------------
FROM base AS runtime
COPY --from=build-runtime /opt/venv /opt/venv
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
