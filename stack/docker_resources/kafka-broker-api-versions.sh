#!/bin/bash
# The health check docker-compose.yml runs against apache/kafka (`kafka-broker-api-versions.sh
# --bootstrap-server HOST:PORT`), answered here by a TCP connect to the broker's listener: this image ships
# the broker's jars, not the admin tools. The services still wait for an answered admin request themselves
# (shared.kafka.wait_for_cluster), so a listener that is open but not yet serving only delays them.
set -eu
server=localhost:9092
while [ $# -gt 0 ]; do
    case "$1" in --bootstrap-server) server=$2; shift 2 ;; *) shift ;; esac
done
exec 3<>"/dev/tcp/${server%:*}/${server##*:}"
