# syntax=docker/dockerfile:1
# tidings: gunicorn + aiohttp's uvloop worker on python:3.11-slim, as a non-root user.
#
#   docker build -t tidings .
#   docker run --rm -p 8080:8080 -e JWT_SECRET=... -e MONGODB_URL=... -e REDIS_URL=... tidings
#
# The project is installed in editable mode from /app, so the packages run from the source tree and the top-level
# templates/ folder stays next to them, as in a checkout. No compiler is needed: every dependency has a wheel.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: a virtualenv in /opt/venv with the dependencies and the project -----------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first, in their own layer, so that a change to the code does not reinstall them: install the project
# from setup.py alone (with empty stand-in packages), then remove the project and keep its dependencies.
COPY setup.py README.md ./
RUN mkdir server handlers documents \
    && touch server/__init__.py handlers/__init__.py documents/__init__.py \
    && pip install . \
    && pip uninstall --yes tidings \
    && rm -rf server handlers documents build tidings.egg-info

COPY . .
RUN pip install --no-deps --editable . \
    && python -c "import tidings.server.app"

# --- final image ------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

RUN groupadd --system --gid 10001 tidings \
    && useradd --system --uid 10001 --gid tidings --home-dir /app --no-create-home --shell /usr/sbin/nologin tidings

# Same paths as in the builder: the virtualenv's editable install points at /app.
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TIDINGS_ENV=production \
    TIDINGS_HOST=0.0.0.0 \
    TIDINGS_PORT=8080

WORKDIR /app
# The code stays owned by root and read-only for the user that runs it (numeric, so runAsNonRoot checks can see it).
USER 10001:10001
EXPOSE 8080

# No curl in slim images: python's urllib fails (exit 1) on a refused connection or any status other than 2xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('TIDINGS_PORT', '8080'), timeout=4)"]

# gunicorn stops gracefully on SIGTERM (docker stop); give it graceful_timeout (30 s) plus a little: docker stop -t 35.
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
