"""The ridestream error tree: every failure a person can act on is one of these.

    RidestreamError                 root; the CLI prints its message on one line and exits non-zero
    ├── ConfigError                 bad settings or arguments (unknown file layout, bad flag values)
    ├── BrokerError                 the local Apache Kafka broker could not be fetched or started
    │   └── JavaNotFoundError       no suitable JDK on PATH / JAVA_HOME
    ├── KafkaUnavailableError       the configured bootstrap servers did not answer in time
    │   └── KafkaAuthenticationError  they answered but refused the client's TLS or SASL credentials
    ├── KafkaAuthorizationError     the client's principal has no ACL for a topic, group or transactional id
    ├── DeliveryError               the broker refused or lost a produced record; never committed past
    ├── DataSourceError             a TLC file that cannot be read or has an unknown layout
    └── ModelArtifactError          a model artifact that is missing, corrupt or incompatible

Errors that concern one message (undecodable bytes, schema violations) are not raised through this tree:
they are values routed to a dead-letter topic (see shared/dead_letter.py).
"""

from __future__ import annotations


class RidestreamError(Exception):
    """Root of every error ridestream reports to a person."""


class ConfigError(RidestreamError):
    """Settings or arguments that cannot work."""


class BrokerError(RidestreamError):
    """The local Apache Kafka broker could not be fetched, started or stopped."""


class JavaNotFoundError(BrokerError):
    """No Java runtime new enough for the broker."""


class KafkaUnavailableError(RidestreamError):
    """The bootstrap servers did not answer an admin request in time."""


class KafkaAuthenticationError(KafkaUnavailableError):
    """The cluster refused the TLS handshake or the SASL credentials: retrying cannot help."""


class KafkaAuthorizationError(RidestreamError):
    """The principal lacks an ACL for what the process must do: fatal, an operator has to grant it."""


class DeliveryError(RidestreamError):
    """A produced record was not acknowledged by the broker."""


class DatabaseError(RidestreamError):
    """The batch job's database: not installed, not reachable, or refusing what was asked."""


class DataSourceError(RidestreamError):
    """A ride data file that cannot be read."""


class ModelArtifactError(RidestreamError):
    """A model artifact that is missing, corrupt or incompatible with this code."""
