"""Settings shared by every ridestream process, read from flags and environment (pydantic-settings).

`KafkaSettings` maps snake_case fields onto librdkafka's dotted keys in one place (`client_config`), so no
other module spells a librdkafka key for connection or security settings.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError
from shared.local_cluster import recorded_bootstrap_servers


class KafkaSettings(BaseSettings):
    """How to reach the cluster. Environment: KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL, ...

    A secured cluster (docs/security.md): KAFKA_SECURITY_PROTOCOL=SASL_SSL,
    KAFKA_SASL_MECHANISM=SCRAM-SHA-512, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE,
    KAFKA_SSL_CA_LOCATION (and KAFKA_SSL_CERTIFICATE_LOCATION, KAFKA_SSL_KEY_LOCATION, KAFKA_SSL_KEY_PASSWORD
    for mutual TLS).
    Secrets are SecretStr (shown as '**********') or files; only `client_config` hands them to librdkafka.
    """

    model_config = SettingsConfigDict(env_prefix="KAFKA_", frozen=True, extra="ignore")

    # None means "the local broker that `ridestream broker up` started" (resolved by resolve_bootstrap).
    bootstrap_servers: str | None = None
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # A file holding the password (a mounted Kubernetes secret, `broker up --secure`'s password files): the
    # password itself then never sits in the environment.
    sasl_password_file: Path | None = None
    # TLS (security_protocol SSL or SASL_SSL): the CA that signed the brokers' certificates; None trusts the
    # system's CAs (managed clusters with public certificates).
    ssl_ca_location: Path | None = None
    # A client certificate and key, for clusters that authenticate clients by mutual TLS.
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    client_id: str = "ridestream"
    # How long a process waits for the cluster to answer before it gives up with a clear error.
    connect_timeout_s: float = Field(default=15.0, gt=0)

    @field_validator("security_protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        protocol = value.upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"security protocol {value!r}: use one of {', '.join(SECURITY_PROTOCOLS)}")
        return protocol

    @model_validator(mode="after")
    def _one_password_source(self) -> KafkaSettings:
        if self.sasl_password is not None and self.sasl_password_file is not None:
            raise ValueError("set KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, not both")
        return self

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
        password = self.resolved_sasl_password()
        if password is not None:
            config["sasl.password"] = password
        tls_files = {
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
        }
        for key, path in tls_files.items():
            if path is not None:
                config[key] = str(_readable(path, key))
        if self.ssl_key_password:
            config["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return config

    def resolved_sasl_password(self) -> str | None:
        """The password from the setting, or else from its file (trailing newline dropped); the file is read
        at each call so a rotated secret is picked up by the next client."""
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is None:
            return None
        try:
            return _readable(self.sasl_password_file, "sasl password file").read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(
                f"cannot read the SASL password file {self.sasl_password_file}: {exc.strerror}"
            ) from None


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


def _readable(path: Path, what: str) -> Path:
    """`path` when it is a file; a ConfigError naming the setting otherwise (never the file's contents)."""
    if not path.is_file():
        raise ConfigError(f"{what}: {path} is not a file")
    return path


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
