"""Pure ML library of odir: data contract, synthetic data, models, losses, metrics, thresholds, TTA, ensembles.

Nothing in this package imports Prefect or MLflow (a test enforces it): every function here is usable and
testable with tensors, arrays and DataFrames alone.
"""

LABELS: tuple[str, ...] = ("D", "G", "A")
"""Class order everywhere: diabetic retinopathy, glaucoma, age-related macular degeneration."""
