"""ONNX exports run by ONNX Runtime against the eager networks they came from, and prediction with several networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from components.data import dataset
from components.models import runtime
from components.models.backbones import build_model
from components.models.inference import EXPORTED_BATCH, predict_image_views, predict_networks_views
from components.models.runtime import TOLERANCE, ExportedNetwork, export_onnx, graph_key, largest_difference
from components.models.tta import STUDY_VIEWS

SIZE = 32


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("tiny_cnn").eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, ExportedNetwork]:
    model = _model(0)
    path = export_onnx(model, SIZE, tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    return model, ExportedNetwork(path)


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_export_gives_the_eager_logits_and_features_for_any_batch(exported, batch: int) -> None:
    model, network = exported
    images = torch.randint(
        0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(batch)
    )
    with torch.no_grad():
        logits, features = model(images), model.forward_features(images)
    assert network(images).shape == (batch, 3) and network.num_features == model.num_features
    assert torch.allclose(network(images), logits, atol=1e-5, rtol=0)
    assert torch.allclose(network.forward_features(images), features, atol=1e-5, rtol=0)


def test_the_check_passes_the_export_and_fails_a_changed_network(exported) -> None:
    model, network = exported
    images = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert largest_difference(model, network, images, STUDY_VIEWS) <= TOLERANCE
    other = _model(1)  # other weights: what a wrong export would compute
    assert largest_difference(other, network, images, STUDY_VIEWS) > TOLERANCE


def _write_images(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"{index}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_several_networks_decode_each_image_once_and_each_gives_its_own_views(
    exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, network = exported
    other = _model(1)
    paths = _write_images(tmp_path, 5)
    alone = [predict_image_views(m, paths, SIZE, STUDY_VIEWS, 2, cache=None) for m in (model, other)]
    decoded = []
    original = dataset.load_image
    monkeypatch.setattr(dataset, "load_image", lambda source, *args: decoded.append(source) or original(source, *args))
    together = predict_networks_views([model, other, network], paths, SIZE, STUDY_VIEWS, 2, cache=None)
    assert sorted(map(str, decoded)) == sorted(paths)  # once each, for three networks
    assert together.shape == (3, len(STUDY_VIEWS), 5, 3)
    np.testing.assert_array_equal(together[:2], np.stack(alone))
    np.testing.assert_allclose(together[2], together[0], atol=TOLERANCE, rtol=0)


def test_an_exported_network_takes_the_views_of_several_images_per_call(exported, tmp_path: Path) -> None:
    _, network = exported
    calls: list[int] = []

    class Counted(ExportedNetwork):
        def __init__(self) -> None:
            self.__dict__.update(network.__dict__)

        def __call__(self, images: torch.Tensor) -> torch.Tensor:
            calls.append(images.shape[0])
            return super().__call__(images)

    paths = _write_images(tmp_path, 2 * EXPORTED_BATCH + 3)
    predict_networks_views([Counted()], paths, SIZE, STUDY_VIEWS, batch_size=len(paths), cache=None)
    views = len(STUDY_VIEWS)
    assert calls == [EXPORTED_BATCH * views, EXPORTED_BATCH * views, 3 * views]


def test_a_second_network_of_an_architecture_reuses_its_traced_graph_with_its_own_weights(tmp_path: Path) -> None:
    graphs = tmp_path / "graphs"
    images = torch.randint(0, 256, (3, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    for seed in (0, 1):
        model = _model(seed)
        network = ExportedNetwork(export_onnx(model, SIZE, tmp_path / f"{seed}.onnx", graphs))
        with torch.no_grad():
            assert torch.allclose(network(images), model(images), atol=1e-5, rtol=0)
            assert torch.allclose(network.forward_features(images), model.forward_features(images), atol=1e-5, rtol=0)
        assert len(list(graphs.iterdir())) == 1  # one architecture, one graph: the second network was not traced
    assert largest_difference(_model(0), network, images, STUDY_VIEWS) > TOLERANCE  # not the first one's weights


def test_the_graph_key_tells_architectures_and_image_sizes_apart() -> None:
    wrapped = runtime._LogitsAndFeatures(_model(0))
    assert graph_key(wrapped, SIZE) == graph_key(runtime._LogitsAndFeatures(_model(1)), SIZE)  # weights aside
    assert graph_key(wrapped, SIZE) != graph_key(wrapped, 2 * SIZE)
    assert graph_key(wrapped, SIZE) != graph_key(runtime._LogitsAndFeatures(build_model("resnet18")), SIZE)


def test_an_unreadable_kept_graph_is_traced_again_and_replaced(tmp_path: Path) -> None:
    graphs = tmp_path / "graphs"
    model = _model(0)
    export_onnx(model, SIZE, tmp_path / "first.onnx", graphs)
    (kept,) = graphs.iterdir()
    kept.write_bytes(b"not a graph")
    network = ExportedNetwork(export_onnx(model, SIZE, tmp_path / "again.onnx", graphs))
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(network(images), model(images), atol=1e-5, rtol=0)
    assert kept.read_bytes() != b"not a graph" and list(graphs.iterdir()) == [kept]
