"""The MLflow model registry: versions, the champion alias, promotion and rollback."""
