#!/bin/sh
# KAFKA_* variables → server.properties (KAFKA_LOG_DIRS → log.dirs; KAFKA_HEAP_OPTS and KAFKA_OPTS are
# JVM options, not broker settings), then format the storage once and run the broker in the foreground.
set -eu
config=/opt/kafka/config/server.properties
: > "$config"
env | sort | while IFS='=' read -r name value; do
    case "$name" in
        KAFKA_HEAP_OPTS|KAFKA_OPTS|KAFKA_JVM_PERFORMANCE_OPTS) ;;
        KAFKA_*) key=$(printf '%s' "${name#KAFKA_}" | tr 'A-Z_' 'a-z.'); printf '%s=%s\n' "$key" "$value" >> "$config" ;;
    esac
done
log_dirs=$(sed -n 's/^log\.dirs=//p' "$config")
log_dirs=${log_dirs:-/tmp/kraft-combined-logs}
# The same default as apache/kafka, so a compose file written for it works unchanged.
CLUSTER_ID=${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}
export LOG_DIR=/tmp/kafka-logs
mkdir -p "$LOG_DIR"
classpath="/opt/kafka/libs/*"
logging="-Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties -Dkafka.logs.dir=$LOG_DIR"
if [ ! -f "${log_dirs%%,*}/meta.properties" ]; then
    java -Xmx256m $logging -cp "$classpath" kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$config"
fi
exec java ${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m} -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError $logging \
    -cp "$classpath" kafka.Kafka "$config"
