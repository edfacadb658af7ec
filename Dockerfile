# mcdrop service image: CPU torch by default, the default models of models/ baked in.
#
#   docker build -t mcdrop .
#   docker run --rm -p 8000:8000 -p 8001:8001 mcdrop
#
# Build arguments and options (docs/docker.md has the details):
#   TORCH_SPEC        pip requirement for torch                 (default torch==2.13.0)
#   TORCH_INDEX_URL   index torch and its dependencies come from (default: PyTorch's CPU wheels)
#                     e.g. https://download.pytorch.org/whl/cu128 for a CUDA build
#   PIP_INDEX_URL     index of the other dependencies            (default: PyPI)
#   --secret id=ca,src=FILE          extra CA certificates (PEM) trusted while pip downloads;
#                                    used only when given, never stored in the image
#   --build-context wheels=DIR       a folder of wheels (e.g. a local torch wheel) that pip
#                                    may install from; bind-mounted, so it stays out of the layers

# Empty unless replaced with --build-context wheels=DIR.
FROM scratch AS wheels

FROM debian:bookworm-slim

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"
ARG PIP_INDEX_URL="https://pypi.org/simple"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# pip trusts certifi's bundle unless told otherwise; with the optional `ca` secret it trusts
# the system bundle plus those certificates (for TLS-intercepting proxies). The combined file
# lives in /tmp of this RUN only.
#
# torch first, in its own layer: it is by far the largest and changes least often.
RUN --mount=type=secret,id=ca,required=false \
    --mount=type=bind,from=wheels,target=/wheels \
    set -e; \
    if [ -s /run/secrets/ca ]; then \
        cat /etc/ssl/certs/ca-certificates.crt /run/secrets/ca > /tmp/ca.pem; \
        export PIP_CERT=/tmp/ca.pem; \
    fi; \
    pip install --find-links /wheels --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
    rm -f /tmp/ca.pem

# The other dependencies, read from pyproject.toml so this layer is rebuilt only when they
# change, not when the source does. setuptools is the build backend of the final install.
COPY pyproject.toml /tmp/pyproject.toml
RUN --mount=type=secret,id=ca,required=false \
    --mount=type=bind,from=wheels,target=/wheels \
    set -e; \
    if [ -s /run/secrets/ca ]; then \
        cat /etc/ssl/certs/ca-certificates.crt /run/secrets/ca > /tmp/ca.pem; \
        export PIP_CERT=/tmp/ca.pem; \
    fi; \
    python3 -c "import re, tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; deps = p['dependencies'] + p['optional-dependencies']['hf']; print('\n'.join(d for d in deps if re.split(r'[^A-Za-z0-9_.-]', d)[0].lower() != 'torch'))" > /tmp/requirements.txt; \
    pip install --find-links /wheels --index-url "$PIP_INDEX_URL" -r /tmp/requirements.txt "setuptools>=68"; \
    rm -f /tmp/ca.pem /tmp/requirements.txt /tmp/pyproject.toml

# The source (what .dockerignore lets through), installed without touching the network.
# The models are made world-readable: files written through a temp file are often 0600,
# and the server runs as a non-root user.
COPY . /src
RUN cd /src \
    && { [ -f README.md ] || echo "# mcdrop" > README.md; } \
    && pip install --no-deps --no-build-isolation . \
    && mkdir -p /models && cp -r /src/models/. /models/ \
    && chmod -R a+rX /models \
    && rm -rf /src \
    && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent mcdrop

# The service reads MCDROP_* settings (service/settings.py); mount another model repository
# over /models to serve it instead of the defaults.
ENV MCDROP_MODELS_DIR=/models

USER mcdrop
WORKDIR /tmp
EXPOSE 8000 8001

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4)"]

CMD ["mcdrop", "serve", "--host", "0.0.0.0", "--port", "8000"]
