"""Networks and how they are run: the backbone registry, attention blocks, test-time views, batched prediction."""

BACKENDS: tuple[str, ...] = ("onnxruntime", "torch")
"""What runs a registered ensemble's networks: their ONNX exports under ONNX Runtime (the default,
:mod:`components.models.runtime`), or eager PyTorch (the reference). Defined here, not in the runtime's module, so that
the command line names them without importing torch."""
DEFAULT_BACKEND = BACKENDS[0]
