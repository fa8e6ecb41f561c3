# Apache Kafka (KRaft) from the jars the project fetches, on Debian's JDK 17: what apache/kafka is to a user
# with a registry. Configured the same way: every KAFKA_FOO_BAR variable becomes foo.bar in
# server.properties, and CLUSTER_ID names the cluster the storage is formatted for.
ARG BASE_IMAGE=ridestream/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
COPY libs /opt/kafka/libs
COPY log4j2.properties /opt/kafka/config/log4j2.properties
COPY kafka-entrypoint.sh /opt/kafka/entrypoint.sh
COPY kafka-broker-api-versions.sh /opt/kafka/bin/kafka-broker-api-versions.sh
RUN chmod +x /opt/kafka/entrypoint.sh /opt/kafka/bin/kafka-broker-api-versions.sh
ENTRYPOINT ["/opt/kafka/entrypoint.sh"]
