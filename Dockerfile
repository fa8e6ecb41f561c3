# One image for every ridestream process; docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY shared shared
COPY producer producer
COPY consumers consumers
COPY stack stack
RUN pip install --no-cache-dir .
ENTRYPOINT []
