"""Trained networks exported to ONNX and run by ONNX Runtime on the CPU: the function of the eager
:class:`~components.models.backbones.Classifier` (its normalisation included), several times faster for prediction on
2 CPU cores (``make bench``, docs/benchmarks.md).

A network is exported once, when the ensemble is registered (:func:`export_onnx`), and checked there on real images
(:func:`largest_difference` against the eager network, :data:`TOLERANCE`); prediction then needs ``onnxruntime`` and
the ``.onnx`` file only. The graph takes a uint8 ``(N, 3, S, S)`` batch of any ``N`` and gives two outputs: the logits
(:data:`LOGITS`) and the pooled features (:data:`FEATURES`, the drift check's embeddings), both computed in one pass.

Tracing a network is the export's cost (EfficientNet-Lite0: 8 CPU seconds, most of it ``torch.export`` reasoning about
the symbolic batch size; a ``tiny_cnn`` 1.2 s, and 3 s more for the exporter's first use in a process), and it depends
on the architecture only: the traced graph (before ONNX Script's optimiser, whose fusions fold the weights into new
tensors) is kept per architecture in a folder (:func:`graph_cache`), and every later network of that architecture,
in this process or another (the fold models of a member, the members of a profile, the next pipeline run), gets it
with its own weights put in (``ONNXProgram.apply_weights``) and is only optimised and saved: 0.5 CPU seconds for a
Lite0. The architecture is the network's module tree as ``repr`` prints it (layer types, kernels, strides,
activations), the names, shapes and types of its weights, the image size, the source of this package and the versions
of torch, timm, ONNX Script and ONNX IR (:func:`graph_key`); the check against eager at registration is the same
whichever way an export was made.

Why ONNX Runtime: measured against OpenVINO and eager PyTorch on the `cpu` profile's champion (docs/benchmarks.md,
"CPU inference"), and ONNX as the format: one file of tensors and operators per network, no Python code to unpickle,
read by either runtime. The export is torch's own maintained exporter (``torch.onnx.export(dynamo=True)``, which needs
``onnxscript`` when it runs); the TorchScript exporter is deprecated.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from components.data.dataset import to_model_input
from components.models.backbones import Classifier
from components.models.tta import predict_view_probs

INPUT, LOGITS, FEATURES = "images", "logits", "features"
TOLERANCE = 1e-4
"""Largest absolute difference of a probability between an exported network and the eager one on real images for the
exported one to be used (float32 either way; measured about 1e-6)."""


EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")
log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet(names: Sequence[str]) -> Iterator[None]:
    """Warnings and errors only from these loggers while the block runs."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class _LogitsAndFeatures(nn.Module):
    """A classifier's logits and pooled features from one pass: what the exported graph gives."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(images)
        return self.model.forward_head(features), features


def export_onnx(model: Classifier, image_size: int, path: Path | str, graphs: Path | None = None) -> Path:
    """Writes ``model`` (in evaluation mode) as one ONNX file that takes uint8 ``(N, 3, image_size, image_size)``
    images with any ``N``; returns its path. The graph is traced once per architecture and kept in ``graphs``
    (default :func:`graph_cache`); see the module docstring."""
    path = Path(path)
    wrapped = _LogitsAndFeatures(model).eval()
    # the exporter reports each of its stages on stdout, and its graph optimiser each rewrite in the log (hundreds of
    # lines per network): odir's commands print their own lines there
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), _quiet(EXPORTER_LOGGERS):
        program = _traced(wrapped, image_size, graphs or graph_cache())
        weights = {**dict(wrapped.named_parameters()), **dict(wrapped.named_buffers())}
        program.apply_weights({name: weights[name] for name in program.model.graph.initializers if name in weights})
        program.optimize()
        program.save(str(path), external_data=False)
    return path


def import_exporter() -> None:
    """Imports what :func:`export_onnx` and :class:`ExportedNetwork` import on first use (1-2.5 s on 2 cores, once per
    process), for a start-up with time to spare (``odir full``'s, while the Prefect server comes up)."""
    import onnx_ir  # noqa: F401  # with onnx: most of the time
    import onnxruntime  # noqa: F401
    import onnxscript.optimizer  # ONNXProgram.optimize's
    import onnxscript.rewriter.onnx_fusions  # noqa: F401
    from torch.onnx import ONNXProgram  # noqa: F401


def _traced(wrapped: nn.Module, image_size: int, graphs: Path) -> torch.onnx.ONNXProgram:
    """The unoptimised program of ``wrapped``'s architecture: from ``graphs`` when it holds it (whatever weights it was
    traced with), else traced now and kept there (written under a temporary name and renamed, so that a concurrent
    reader never sees half a file)."""
    import onnx_ir

    kept = graphs / f"{graph_key(wrapped, image_size)}.onnx"
    if kept.is_file():
        try:
            return torch.onnx.ONNXProgram(onnx_ir.load(kept), None)
        except Exception as error:  # unreadable (a disk fault): traced again and replaced
            log.warning("traced graph %s unreadable, tracing again: %s", kept, error)
    example = torch.zeros((2, 3, image_size, image_size), dtype=torch.uint8)
    program = torch.onnx.export(
        wrapped, (example,), None, input_names=[INPUT], output_names=[LOGITS, FEATURES],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), dynamo=True, optimize=False, verbose=False,
    )  # fmt: skip
    graphs.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=graphs, suffix=".part", delete=False) as part:
        onnx_ir.save(program.model, part.name)
    os.replace(part.name, kept)
    return program


def graph_key(wrapped: nn.Module, image_size: int) -> str:
    """What a traced graph depends on (see the module docstring), hashed."""
    schema = [(name, tuple(t.shape), str(t.dtype)) for name, t in (*wrapped.named_parameters(),
                                                                  *wrapped.named_buffers())]  # fmt: skip
    parts = (repr(wrapped), schema, image_size, _code_and_versions())
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


@functools.cache
def _code_and_versions() -> tuple[str, ...]:
    """The source of this package's modules (the networks and this exporter) and the versions of the libraries that
    build and trace them."""
    package = Path(__file__).parent
    code = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(package.glob("*.py")))).hexdigest()
    return (code, *(f"{name} {metadata.version(name)}" for name in ("torch", "timm", "onnxscript", "onnx_ir")))


def graph_cache() -> Path:
    """Where traced graphs are kept: ``ODIR_GRAPH_CACHE``, else ``odir/onnx-graphs`` in the user's cache folder
    (``XDG_CACHE_HOME``, default ``~/.cache``). Nothing in it is needed: an empty folder only costs a trace per
    architecture."""
    if folder := os.environ.get("ODIR_GRAPH_CACHE"):
        return Path(folder)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "odir" / "onnx-graphs"


class ExportedNetwork:
    """An exported network run by ONNX Runtime's CPU execution provider, called as the eager classifier is: a uint8
    ``(N, 3, S, S)`` batch in, ``(N, classes)`` logits out; :meth:`forward_features` gives the pooled features.

    Args:
        path: the ``.onnx`` file :func:`export_onnx` wrote.
        threads: ONNX Runtime's intra-op threads; None: as many as torch uses (``torch.get_num_threads()``).
    """

    device = torch.device("cpu")

    def __init__(self, path: Path | str, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # errors only: the optimiser's notes are not the user's business
        # no memory arena: each session's arena keeps its largest run's activations for good, which for an
        # ensemble's five Lite0 sessions at 224 px held 4.1 GB against 1.0 GB without, at the same speed (measured)
        options.enable_cpu_mem_arena = False
        # idle threads sleep instead of spinning: on 2 shared cores, 1.2-1.4x more forwards per second with one
        # caller and with four concurrent ones (a served model), measured under load; an idle machine may lose a little
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.num_features = int(self.session.get_outputs()[1].shape[1])

    def _run(self, output: str, images: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(to_model_input(images).cpu().numpy())
        return torch.from_numpy(self.session.run([output], {INPUT: batch})[0])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(LOGITS, images)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(FEATURES, images)


Network = Classifier | ExportedNetwork
"""What prediction runs: the eager classifier, or its export."""


def prepare(network: Network) -> torch.device:
    """Sets an eager network to evaluation mode; returns the device its input goes to."""
    if isinstance(network, ExportedNetwork):
        return network.device
    network.eval()
    return next(network.parameters()).device


@torch.no_grad()
def largest_difference(
    model: Classifier, exported: ExportedNetwork, images: torch.Tensor, views: Sequence[str]
) -> float:
    """The largest absolute difference between the eager and the exported network's per-view sigmoid
    probabilities of a uint8 ``(B, 3, S, S)`` batch (on the CPU, in forwards of ``B``)."""
    model = model.eval()
    eager = predict_view_probs(model, images.to(prepare(model)), views, images.shape[0]).cpu()
    return float((predict_view_probs(exported, images, views) - eager).abs().max())
