# One image for every ridestream process; docker-compose.yml picks the command.
# Users keep the official Python base; on machines without an image registry `python -m stack.docker up`
# builds this on a locally made Debian base (BASE_IMAGE=ridestream/python:3.11-bookworm).
ARG BASE_IMAGE=python:3.11-slim

# The install compiles the tree walk (consumers/_treewalk.c): a compiler in this stage only. python:3.11-slim
# ships Python's headers; Debian's python3 (the local base) needs python3-dev for them.
FROM ${BASE_IMAGE} AS build
RUN include=$(python3 -c 'import sysconfig; print(sysconfig.get_path("include"))') \
    && if [ ! -f "$include/Python.h" ]; then headers=python3-dev; fi \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev $headers \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# A virtualenv: Debian's own Python refuses system-wide pip installs (PEP 668); the slim image is fine with it.
RUN python3 -m venv /opt/venv
COPY pyproject.toml setup.py README.md ./
COPY schemas schemas
COPY shared shared
COPY producer producer
COPY consumers consumers
COPY stack stack
# uv installs the same pins as pip in a fraction of the time (the image build is part of CI).
RUN /opt/venv/bin/pip install --no-cache-dir 'uv>=0.5,<1' \
    && /opt/venv/bin/uv pip install --no-cache --compile-bytecode --python /opt/venv/bin/python . \
    && /opt/venv/bin/pip uninstall --yes uv

# Only the installed venv: no compiler, and no source tree in the working directory, where `python -m
# consumers.duration` would import the sources (which have no built extension) before the installed package.
FROM ${BASE_IMAGE}
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
ENTRYPOINT []
