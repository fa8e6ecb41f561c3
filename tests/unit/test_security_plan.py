"""The secured cluster's pure parts: the ACL plan holds to the names the services really use, the TLS files
are what Kafka and librdkafka expect, and KafkaSettings keeps its secrets out of sight."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from pydantic import ValidationError

from consumers.registry import SERVICE_NAMES, service_spec
from schemas.topics import CONTROL_TOPIC, RIDE_EVENTS_TOPIC, prediction_topic
from shared.errors import ConfigError
from shared.kafka import AclGrant
from shared.settings import KafkaSettings
from stack.security import BROKER_CN, SecureCluster, generate_tls, service_grants


def allows(grants: list[AclGrant], operation: str, resource: str, name: str) -> bool:
    """Whether any grant lets `operation` on the named resource (a literal match or a prefix)."""
    return any(
        g.operation == operation
        and g.resource == resource
        and (name == g.name if g.pattern == "literal" else name.startswith(g.name))
        for g in grants
    )


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_a_scoring_principal_may_do_what_its_default_settings_need_and_nothing_of_the_others(
    service: str,
) -> None:
    grants = service_grants()[service]
    settings = service_spec(service).settings({"instance_name": "a-host"})
    green = service_spec(service).settings({"instance_name": "a-host", "deployment": "green"})
    assert allows(grants, "read", "topic", settings.input_topic)
    assert allows(grants, "read", "group", settings.consumer_group)
    assert allows(grants, "read", "group", green.consumer_group)
    for topic in (settings.output_topic, settings.dlq_topic, settings.resolved_shadow_topic, CONTROL_TOPIC):
        assert allows(grants, "write", "topic", topic)
    assert allows(grants, "read", "topic", CONTROL_TOPIC)
    for instance in (settings, green):
        assert allows(grants, "write", "transactional_id", instance.transactional_id)
        assert allows(grants, "describe", "transactional_id", instance.transactional_id)
    for other in set(SERVICE_NAMES) - {service}:
        assert not allows(grants, "read", "topic", prediction_topic(other))
        assert not allows(grants, "write", "topic", prediction_topic(other))
        assert not allows(grants, "read", "group", f"ridestream-{other}")
        assert not allows(grants, "write", "transactional_id", f"ridestream-{other}.a-host")


def test_no_principal_may_create_anything_and_every_one_is_a_user() -> None:
    plan = service_grants()
    assert set(plan) == {"producer", *SERVICE_NAMES, "evaluator", "estimate", "backend"}
    for user, grants in plan.items():
        assert grants, user
        assert {g.principal for g in grants} == {f"User:{user}"}
        assert all(g.operation != "create" for g in grants)


def test_the_producer_only_writes_the_rides_and_the_estimate_service_only_reads_the_control_topic() -> None:
    plan = service_grants()
    assert plan["producer"] == [AclGrant("User:producer", "write", "topic", RIDE_EVENTS_TOPIC)]
    assert {(g.operation, g.resource, g.name) for g in plan["estimate"] if g.resource == "topic"} == {
        ("read", "topic", CONTROL_TOPIC)
    }


def test_the_broker_certificate_is_signed_by_the_ca_for_loopback_and_its_keystore_opens(
    tmp_path: Path,
) -> None:
    tls = generate_tls(tmp_path)
    ca = x509.load_pem_x509_certificate(tls.ca_location.read_bytes())
    key, cert, chain = pkcs12.load_key_and_certificates(
        tls.keystore_location.read_bytes(), tls.key_password.encode()
    )
    assert key is not None and cert is not None
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == f"CN={BROKER_CN}"
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert chain == [ca]
    assert tls.keystore_location.stat().st_mode & 0o077 == 0  # the key is the owner's only
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(tls.keystore_location.read_bytes(), b"wrong")


def test_a_secure_cluster_survives_its_state_file_and_the_broker_gets_only_the_bootstrap_users(
    tmp_path: Path,
) -> None:
    cluster = SecureCluster.create(tmp_path)
    cluster.passwords = {"tip": "tip-secret"}
    again = SecureCluster.from_state(cluster.to_state())
    assert again == cluster
    arguments = " ".join(cluster.format_arguments())
    assert "name=admin," in arguments and "name=broker," in arguments and "tip" not in arguments
    config = cluster.node_config(9093, 9094, "127.0.0.1", "127.0.0.1")
    assert config["allow.everyone.if.no.acl.found"] == "false"
    assert "PLAINTEXT" not in config["listener.security.protocol.map"]


def test_kafka_settings_read_the_password_from_its_file_and_never_show_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "tip.password"
    secret_file.write_text("s3cret-value\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(secret_file))
    monkeypatch.setenv("KAFKA_SSL_CA_LOCATION", str(ca))
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9093", sasl_username="tip")
    config = settings.client_config()
    assert config["sasl.password"] == "s3cret-value"
    assert config["security.protocol"] == "SASL_SSL" and config["ssl.ca.location"] == str(ca)
    assert "s3cret-value" not in repr(settings) + str(settings.model_dump())


def test_kafka_settings_say_clearly_what_is_wrong_without_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError, match="not both"):
        KafkaSettings(sasl_password="x", sasl_password_file=tmp_path / "p")
    with pytest.raises(ValidationError, match="SASL_SSL"):
        KafkaSettings(security_protocol="TLS")
    missing = KafkaSettings(bootstrap_servers="b:1", sasl_password_file=tmp_path / "absent")
    with pytest.raises(ConfigError, match="absent is not a file"):
        missing.client_config()
    no_ca = KafkaSettings(bootstrap_servers="b:1", ssl_ca_location=tmp_path / "no-ca.pem")
    with pytest.raises(ConfigError, match="ssl.ca.location"):
        no_ca.client_config()


def test_kafka_settings_keep_the_plaintext_defaults() -> None:
    assert KafkaSettings(bootstrap_servers="b:1").client_config() == {
        "bootstrap.servers": "b:1",
        "security.protocol": "PLAINTEXT",
        "client.id": "ridestream",
    }


def test_the_faust_engine_trusts_the_configured_ca_and_reads_the_password_file(tmp_path: Path) -> None:
    """The second engine connects to a secured cluster with the same settings as the first: the CA from
    KAFKA_SSL_CA_LOCATION (not only the system's), the password from KAFKA_SASL_PASSWORD_FILE."""
    from stack.faust_engine import credentials

    tls = generate_tls(tmp_path / "tls")
    secret = tmp_path / "tip.password"
    secret.write_text("s3cret-from-a-file\n")
    kafka = KafkaSettings(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="tip",
        sasl_password_file=secret, ssl_ca_location=tls.ca_location,
    )  # fmt: skip
    found = credentials(kafka)
    assert found is not None and found.password == "s3cret-from-a-file"
    subjects = [dict(item[0] for item in ca["subject"]) for ca in found.ssl_context.get_ca_certs()]
    assert {"commonName": "ridestream local CA"} in subjects
