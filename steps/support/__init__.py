"""What the steps share and no step owns: MLflow tracking, registry locks, file integrity, object storage, the
step base (reuse and code fingerprints), the formats steps hand each other, the step CLI and the registered
ensemble's pyfunc."""
