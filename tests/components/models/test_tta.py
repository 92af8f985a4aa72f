"""TTA views against explicit index arithmetic, and averaging in probability space."""

from __future__ import annotations

import pytest
import torch

from components.models.tta import DIHEDRAL_VIEWS, STUDY_VIEWS, VIEWS, predict_proba, stack_views

N = 4
IMAGE = torch.arange(2 * N * N, dtype=torch.float32).view(1, 2, N, N)


def _explicit(name: str, i: int, j: int) -> tuple[int, int]:
    """Source pixel (row, col) of output pixel (i, j) for each view, written out by hand."""
    return {
        "identity": (i, j),
        "hflip": (i, N - 1 - j),
        "vflip": (N - 1 - i, j),
        "rot90": (j, N - 1 - i),  # counter-clockwise: the top row becomes the left column, read upwards
        "rot270": (N - 1 - j, i),  # clockwise
        "rot180": (N - 1 - i, N - 1 - j),
        "transpose": (j, i),  # about the main diagonal
        "antitranspose": (N - 1 - j, N - 1 - i),  # about the other diagonal
    }[name]


@pytest.mark.parametrize("name", DIHEDRAL_VIEWS)
def test_views_match_index_arithmetic(name: str) -> None:
    out = VIEWS.get(name)(IMAGE)
    for i in range(N):
        for j in range(N):
            r, c = _explicit(name, i, j)
            assert torch.equal(out[0, :, i, j], IMAGE[0, :, r, c]), (name, i, j)


def test_rot90_turns_the_top_row_into_the_left_column() -> None:
    top_right = torch.zeros(1, 1, 3, 3)
    top_right[0, 0, 0, 2] = 1.0
    assert VIEWS.get("rot90")(top_right)[0, 0, 0, 0] == 1.0  # counter-clockwise: top-right -> top-left
    assert VIEWS.get("rot270")(top_right)[0, 0, 2, 2] == 1.0  # clockwise: top-right -> bottom-right


def test_stack_views_orders_view_major() -> None:
    batch = torch.randn(3, 2, N, N)
    stacked = stack_views(batch)
    assert stacked.shape == (15, 2, N, N)
    assert torch.equal(stacked[3:6], torch.flip(batch, dims=(-1,)))


class _Spy(torch.nn.Module):
    """Logit = mean of the top-left 2x2 corner per channel, so views give different outputs; counts forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return torch.cat([x[:, :, :2, :2].mean(dim=(2, 3)), x[:, :1, 0, 0]], dim=1)


def test_identity_only_equals_plain_prediction() -> None:
    model, batch = _Spy(), torch.randn(3, 2, N, N)
    assert torch.allclose(predict_proba(model, batch, ("identity",)), torch.sigmoid(model(batch)))


def test_probabilities_are_averaged_over_views_in_one_forward() -> None:
    model, batch = _Spy(), torch.randn(3, 2, N, N)
    probs = predict_proba(model, batch)
    expected = torch.stack([torch.sigmoid(model(VIEWS.get(v)(batch))) for v in STUDY_VIEWS]).mean(dim=0)
    assert torch.allclose(probs, expected, atol=1e-7)
    assert model.batch_sizes[0] == 15
    chunked = _Spy()
    assert torch.allclose(predict_proba(chunked, batch, max_batch=4), probs, atol=1e-7)
    assert chunked.batch_sizes == [4, 4, 4, 3]


def test_bad_views_raise() -> None:
    with pytest.raises(ValueError, match=r"unknown TTA view 'hlfip'.*Did you mean 'hflip'"):
        predict_proba(_Spy(), IMAGE, ("hlfip",))
    with pytest.raises(ValueError, match="at least one TTA view"):
        predict_proba(_Spy(), IMAGE, ())
    with pytest.raises(ValueError, match="square"):
        stack_views(torch.zeros(1, 3, 4, 5))
