# syntax=docker/dockerfile:1
# tidings: gunicorn + aiohttp's uvloop worker on python:3.11-slim, as a non-root user.
#
#   docker build -t tidings .
#   docker run --rm -p 8080:8080 -e JWT_SECRET=... -e MONGODB_URL=... -e REDIS_URL=... tidings
#
# The builder makes a wheel of the project and installs it into /opt/venv; the image gets that virtualenv and
# gunicorn.conf.py, nothing else of the source tree. The wheel holds one package, tidings/ (templates and static files
# included), so the image runs what `pip install` ships (tests/test_wheel.py checks the same wheel, installed, with the
# same gunicorn command). No compiler is needed: every dependency has a wheel.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: a virtualenv in /opt/venv with the dependencies and the project's wheel ---------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, in their own layer, so that a change to the code does not reinstall them: setup.py's
# install_requires, printed by running setup.py against a stand-in setuptools (a venv of 3.12+ has none).
COPY setup.py README.md ./
RUN python -c "import runpy, sys, types; \
    sys.modules['setuptools'] = types.SimpleNamespace(setup=lambda **kw: print('\n'.join(kw['install_requires']))); \
    runpy.run_path('setup.py')" > requirements.txt \
    && pip install --requirement requirements.txt

# The wheel, then the wheel installed (not the source tree); `pip check` fails the build if the layer above missed a
# requirement of the wheel. The import runs from / so that nothing in /src can stand in for the installed package.
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip install --no-deps /wheels/tidings-*.whl \
    && pip check \
    && cd / && python -c "import tidings.server.app"

# --- final image ------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

RUN groupadd --system --gid 10001 tidings \
    && useradd --system --uid 10001 --gid tidings --home-dir /app --no-create-home --shell /usr/sbin/nologin tidings

# The same path as in the builder: the virtualenv's scripts name /opt/venv/bin/python.
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY gunicorn.conf.py ./

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TIDINGS_ENV=production \
    TIDINGS_HOST=0.0.0.0 \
    TIDINGS_PORT=8080

# The code stays owned by root and read-only for the user that runs it (numeric, so runAsNonRoot checks can see it).
USER 10001:10001
EXPOSE 8080

# No curl in slim images: python's urllib fails (exit 1) on a refused connection or any status other than 2xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('TIDINGS_PORT', '8080'), timeout=4)"]

# gunicorn stops gracefully on SIGTERM (docker stop); give it graceful_timeout (30 s) plus a little: docker stop -t 35.
# It serves tidings.server.app:gunicorn_runner, the wsgi_app of gunicorn.conf.py.
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
