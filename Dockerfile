# One image for every ridestream process; docker-compose.yml picks the command.
# Users keep the official Python base; on machines without an image registry `python -m stack.docker up`
# builds this on a locally made Debian base (BASE_IMAGE=ridestream/python:3.11-bookworm).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
WORKDIR /app
# A virtualenv: Debian's own Python refuses system-wide pip installs (PEP 668); the slim image is fine with it.
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY shared shared
COPY producer producer
COPY consumers consumers
COPY stack stack
# uv installs the same pins as pip in a fraction of the time (the image build is part of CI).
RUN pip install --no-cache-dir 'uv>=0.5,<1' && uv pip install --no-cache --compile-bytecode --python /opt/venv/bin/python . \
    && pip uninstall --yes uv
ENTRYPOINT []
