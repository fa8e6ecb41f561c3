"""The batch scoring job: rides from a database, predictions into another (docs/batch.md)."""
