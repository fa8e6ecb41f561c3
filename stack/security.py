"""A secured local cluster (`ridestream broker up --secure`): its certificates, its principals and their ACLs.

    CA (self-signed, ca.pem) ──signs──► broker certificate (CN=ridestream-broker, SAN 127.0.0.1, localhost)

    listener    protocol     who connects              how they authenticate
    ─────────   ─────────    ───────────────────────   ──────────────────────────────────────────────
    SASL_SSL    SASL_SSL     every client, and the     SCRAM-SHA-512 over TLS: one principal per service,
                             brokers to each other     `admin` (super user), `broker` (inter-broker)
    CONTROLLER  SSL          brokers → KRaft quorum    mutual TLS with the broker certificate
                                                       (User:CN=ridestream-broker, a super user)

Nothing listens in plaintext. The controller listener cannot use SCRAM (KRaft keeps SCRAM credentials in
the metadata log the controllers serve, so they cannot check them before the log is up), and PLAINTEXT there
would make every anonymous loopback client a super user; mutual TLS needs no credential in the log.

The super user `admin` and the inter-broker user `broker` have SCRAM credentials from the start, written
into the bootstrap metadata by `kafka-storage format --add-scram`. Everything else (the service principals'
credentials, their ACLs, the topics they use) is created through the SASL_SSL listener with the AdminClient
once the cluster is up (`provision`).

The ACL plan (`service_grants`) is pure data, the one place that says what each principal may do; docs/
security.md is its table. Each service gets the least it needs for the default topic and group names, and
nothing to create: `broker up --secure` creates every topic beforehand.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from consumers.registry import SERVICE_NAMES
from schemas.topics import (
    CONTROL_TOPIC,
    EVALUATIONS_TOPIC,
    RIDE_EVENTS_TOPIC,
    dead_letter_topic,
    prediction_topic,
    shadow_topic,
)
from shared.control import ensure_control_topic
from shared.kafka import (
    AclGrant,
    AclPattern,
    Operation,
    create_acls,
    ensure_topic,
    upsert_scram_credentials,
)

SCRAM_MECHANISM: Final = "SCRAM-SHA-512"
ADMIN = "admin"
# The inter-broker user: its SCRAM credential is bootstrapped at format time, like the admin's.
BROKER_USER = "broker"
BROKER_CN = "ridestream-broker"
# The principal Kafka's default principal builder gives a client presenting the broker certificate.
BROKER_CERT_PRINCIPAL = f"User:CN={BROKER_CN}"
EVALUATOR_GROUP = "ridestream-evaluator"
# Consumers that only assign partitions (the control log's readers, the backend's prediction feed) still
# need a group id; librdkafka looks its coordinator up, which needs DESCRIBE on it. Each names its group
# with one of these prefixes and a random suffix.
CONTROL_READER_GROUPS = "ridestream-control-reader-"
BACKEND_FEED_GROUPS = "ridestream-backend-feed-"
CERT_DAYS = 365
TOPIC_PARTITIONS = 6


# ------------------------------------------------------------------------------------- certificates ----


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of a secured cluster; `key_password` unlocks the broker's private key."""

    ca_location: Path
    keystore_location: Path
    key_password: str


def _write_private(path: Path, data: bytes) -> None:
    """Owner-only from the first byte: a key or secret is never readable by others, not even briefly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def generate_tls(directory: Path) -> TlsFiles:
    """A new CA and a broker certificate it signs, valid for 127.0.0.1 and localhost, as PEM files.

    The broker's keystore is a PKCS#12 file (key and chain) under `key_password`; the CA is a PEM file,
    Kafka's truststore and every client's `ssl.ca.location`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("ridestream local CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(BROKER_CN))
        .issuer_name(ca_name)
        .public_key(broker_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        # Server to clients, and client to the controllers (mutual TLS on the controller listener).
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_password = secrets.token_urlsafe(24)
    ca_location = directory / "ca.pem"
    ca_location.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    keystore = directory / "broker.keystore.p12"
    # PKCS#12 with AES and PBKDF2 (JDK 17 keytool's own default). Not a PEM keystore file: Kafka needs its
    # key encrypted, and the JDK's PKCS#8 reader knows no PBES2 ("PBES2 SecretKeyFactory not available").
    _write_private(
        keystore,
        pkcs12.serialize_key_and_certificates(
            BROKER_CN.encode(),
            broker_key,
            broker_cert,
            [ca_cert],
            serialization.BestAvailableEncryption(key_password.encode()),
        ),
    )
    return TlsFiles(ca_location, keystore, key_password)


# ------------------------------------------------------------------------------------------- grants ----


def _topic(principal: str, operation: Operation, *topics: str) -> list[AclGrant]:
    return [AclGrant(principal, operation, "topic", topic) for topic in topics]


def _group(principal: str, name: str, pattern: AclPattern = "literal") -> AclGrant:
    # READ on a group covers joining it, committing and fetching offsets (and DESCRIBE, which READ implies).
    return AclGrant(principal, "read", "group", name, pattern)


def scoring_grants(service: str) -> list[AclGrant]:
    """A scoring service: reads the rides, writes its predictions (and shadow) and dead letters, reads and
    writes the control topic (it follows it, and writes its status and switch records), in its group.

    Its blue/green deployments consume as `ridestream-<svc>` and `ridestream-<svc>.green`; under exactly-once
    its transactional.id is `<group>.<instance>`: both come under the prefix `ridestream-<svc>.`.
    """
    user = f"User:{service}"
    group = f"ridestream-{service}"
    output = prediction_topic(service)
    return [
        *_topic(user, "read", RIDE_EVENTS_TOPIC, CONTROL_TOPIC),
        *_topic(user, "write", output, shadow_topic(output), dead_letter_topic(service), CONTROL_TOPIC),
        _group(user, group),
        _group(user, f"{group}.", "prefixed"),
        _group(user, CONTROL_READER_GROUPS, "prefixed"),
        AclGrant(user, "write", "transactional_id", f"{group}.", "prefixed"),
        AclGrant(user, "describe", "transactional_id", f"{group}.", "prefixed"),
    ]


def service_grants() -> dict[str, list[AclGrant]]:
    """Every principal of the fleet (its user name) → the ACLs it holds. Nothing may create a topic."""
    predictions = [prediction_topic(s) for s in SERVICE_NAMES]
    judged = [t for p in predictions for t in (p, shadow_topic(p))]
    return {
        # `ridestream produce`: the rides only (WRITE also covers the idempotent producer since Kafka 3.0).
        "producer": _topic("User:producer", "write", RIDE_EVENTS_TOPIC),
        **{service: scoring_grants(service) for service in SERVICE_NAMES},
        # The evaluator joins predictions with outcomes and keeps its figures on the evaluations topic.
        "evaluator": [
            *_topic("User:evaluator", "read", RIDE_EVENTS_TOPIC, *judged, EVALUATIONS_TOPIC),
            *_topic("User:evaluator", "write", EVALUATIONS_TOPIC),
            _group("User:evaluator", EVALUATOR_GROUP),
            _group("User:evaluator", CONTROL_READER_GROUPS, "prefixed"),
        ],
        # The estimate service (HTTP) only follows the control topic; it writes nothing to Kafka.
        "estimate": [
            *_topic("User:estimate", "read", CONTROL_TOPIC),
            _group("User:estimate", CONTROL_READER_GROUPS, "prefixed"),
        ],
        # The TaxiApp backend publishes ride events and streams predictions to riders (assigned, no group).
        "backend": [
            *_topic("User:backend", "write", RIDE_EVENTS_TOPIC),
            *_topic("User:backend", "read", *predictions),
            _group("User:backend", BACKEND_FEED_GROUPS, "prefixed"),
        ],
    }


def fleet_topics() -> list[str]:
    """The topics of the default names, created by the admin before any principal needs them."""
    outputs = [prediction_topic(s) for s in SERVICE_NAMES]
    return [
        RIDE_EVENTS_TOPIC,
        *outputs,
        *(shadow_topic(o) for o in outputs),
        *(dead_letter_topic(s) for s in SERVICE_NAMES),
    ]


# ---------------------------------------------------------------------------------------- provision ----


def new_password() -> str:
    return secrets.token_urlsafe(24)


def provision(admin_config: Mapping[str, str], grants: Mapping[str, list[AclGrant]]) -> dict[str, str]:
    """Create the fleet's topics, a SCRAM credential with a new password for each principal, and its ACLs.

    Returns user → password. Run as the super user on a cluster that is up.
    """
    for topic in fleet_topics():
        ensure_topic(admin_config, topic, TOPIC_PARTITIONS)
    for compacted in (CONTROL_TOPIC, EVALUATIONS_TOPIC):
        ensure_control_topic(admin_config, compacted)
    passwords = {user: new_password() for user in grants}
    upsert_scram_credentials(admin_config, passwords, SCRAM_MECHANISM)
    create_acls(admin_config, [grant for user_grants in grants.values() for grant in user_grants])
    return passwords


# ------------------------------------------------------------------------------------------ cluster ----


@dataclass
class SecureCluster:
    """The secrets and files of a secured local cluster; `passwords` (user → password) once provisioned."""

    tls: TlsFiles
    admin_password: str
    broker_password: str
    passwords: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, directory: Path) -> SecureCluster:
        return cls(generate_tls(directory), new_password(), new_password())

    def node_config(
        self, broker_port: int, controller_port: int, bind_host: str, advertised: str
    ) -> dict[str, str]:
        """The listener and security part of a node's server.properties (see the module docstring)."""
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{BROKER_USER}" password="{self.broker_password}";'
        )
        return {
            "listeners": f"SASL_SSL://{bind_host}:{broker_port},CONTROLLER://{bind_host}:{controller_port}",
            "advertised.listeners": f"SASL_SSL://{advertised}:{broker_port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SSL",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            # The server side checks clients against the SCRAM credentials in the metadata log; the same
            # login module is the inter-broker client's, as user `broker`.
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(self.tls.keystore_location),
            "ssl.keystore.password": self.tls.key_password,
            "ssl.key.password": self.tls.key_password,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.tls.ca_location),
            # Mutual TLS between brokers and controllers only: clients authenticate with SCRAM.
            "listener.name.controller.ssl.client.auth": "required",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{ADMIN};User:{BROKER_USER};{BROKER_CERT_PRINCIPAL}",
        }

    def format_arguments(self) -> list[str]:
        """`kafka-storage format` arguments that put the admin's and the broker's credentials in the
        bootstrap metadata: without them no one could ever authenticate to create the others."""
        return [
            argument
            for user, password in ((ADMIN, self.admin_password), (BROKER_USER, self.broker_password))
            for argument in ("--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]")
        ]

    @property
    def directory(self) -> Path:
        return self.tls.ca_location.parent

    def password_file(self, user: str) -> Path:
        """Where `user`'s password is kept for `KAFKA_SASL_PASSWORD_FILE` (owner-only)."""
        return self.directory / f"{user}.password"

    def write_password_files(self) -> None:
        for user, password in {ADMIN: self.admin_password, **self.passwords}.items():
            _write_private(self.password_file(user), password.encode())

    @property
    def principals(self) -> list[str]:
        """The users a client can authenticate as: the super user first."""
        return [ADMIN, *self.passwords]

    def to_state(self) -> dict[str, Any]:
        """For the (owner-only) state file of `broker up`: `broker status` shows principals, never these."""
        return {
            "sasl_mechanism": SCRAM_MECHANISM,
            "ca_location": str(self.tls.ca_location),
            "keystore_location": str(self.tls.keystore_location),
            "key_password": self.tls.key_password,
            "admin_password": self.admin_password,
            "broker_password": self.broker_password,
            "principals": {
                user: {"password": password, "password_file": str(self.password_file(user))}
                for user, password in self.passwords.items()
            },
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> SecureCluster:
        tls = TlsFiles(
            Path(state["ca_location"]), Path(state["keystore_location"]), str(state["key_password"])
        )
        passwords = {user: str(p["password"]) for user, p in state.get("principals", {}).items()}
        return cls(tls, str(state["admin_password"]), str(state["broker_password"]), passwords)

    def client_config(self, bootstrap_servers: str, user: str = ADMIN) -> dict[str, str]:
        """librdkafka settings of a client authenticating as `user` (the admin or a provisioned one)."""
        password = self.admin_password if user == ADMIN else self.passwords[user]
        return {
            "bootstrap.servers": bootstrap_servers,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": SCRAM_MECHANISM,
            "sasl.username": user,
            "sasl.password": password,
            "ssl.ca.location": str(self.tls.ca_location),
        }
