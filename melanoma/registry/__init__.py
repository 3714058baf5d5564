"""The MLflow model registry: versions, the champion alias, promotion and rollback, the served
model, the sites stored with each version."""
