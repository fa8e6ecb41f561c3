# The MLflow tracking and registry server docker-compose runs (SQLite store and proxied artifacts on the
# `mlflow` volume). The fleet itself needs only mlflow-skinny; the server needs the full package.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The same major release as the fleet's client (pyproject.toml pins mlflow-skinny>=3.5,<4).
RUN pip install --no-cache-dir "mlflow>=3.5,<4"
EXPOSE 5000
ENTRYPOINT []
CMD ["mlflow", "server", "--backend-store-uri", "sqlite:////mlflow/mlflow.db", "--artifacts-destination", "/mlflow/artifacts", "--host", "0.0.0.0", "--port", "5000"]
