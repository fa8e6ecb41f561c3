# Python 3.11 on the locally made Debian base: what python:3.11-slim is to a user with a registry.
# The machine's own extra certificate authorities (/usr/local/share/ca-certificates, often a proxy's) are
# trusted inside too, so pip and apt in builds reach the registries the way the machine does.
ARG BASE_IMAGE=ridestream/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3 python3-venv ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /usr/bin/python3 /usr/local/bin/python
COPY ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1
