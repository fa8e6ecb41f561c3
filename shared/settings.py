"""Settings shared by every ridestream process, read from flags and environment (pydantic-settings).

`KafkaSettings` maps snake_case fields onto librdkafka's dotted keys in one place (`client_config`), so no
other module spells a librdkafka key for connection or security settings.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError
from shared.local_cluster import recorded_bootstrap_servers


class KafkaSettings(BaseSettings):
    """How to reach the cluster. Environment: KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL, ..."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", frozen=True, extra="ignore")

    # None means "the local broker that `ridestream broker up` started" (resolved by resolve_bootstrap).
    bootstrap_servers: str | None = None
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    client_id: str = "ridestream"
    # How long a process waits for the cluster to answer before it gives up with a clear error.
    connect_timeout_s: float = Field(default=15.0, gt=0)

    def client_config(self) -> dict[str, str]:
        """librdkafka connection keys for a client of this cluster."""
        config = {
            "bootstrap.servers": resolve_bootstrap(self.bootstrap_servers),
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
        }
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        return config


def resolve_bootstrap(explicit: str | None) -> str:
    """An explicit address wins; otherwise the address of the local broker started by `broker up`."""
    if explicit:
        return explicit
    found = recorded_bootstrap_servers()
    if found is None:
        raise ConfigError(
            "no bootstrap servers given and no local broker is running: "
            "start one with `ridestream broker up` or pass --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS"
        )
    return found
