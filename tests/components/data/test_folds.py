"""Patient-grouped, label-stratified folds: a patient is never split, every fold has patients, labels are spread
evenly, the same seed gives the same folds, and bad requests end in OdirError."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from components import LABELS
from components.data.splits import patient_of
from components.errors import OdirError
from components.data.folds import CVSpec, _fill_empty_folds, assign_folds, fold_table

# one patient: one or two eyes, each written with or without ".jpg", each with random D/G/A labels
EYE_LABELS = st.lists(st.integers(0, 1), min_size=3, max_size=3)
PATIENT = st.tuples(
    st.sampled_from([("left",), ("right",), ("left", "right"), ("right", "left")]),
    st.lists(st.booleans(), min_size=2, max_size=2),
    st.lists(EYE_LABELS, min_size=2, max_size=2),
)


def _pool(patients: list[tuple[tuple[str, ...], list[bool], list[list[int]]]]) -> tuple[list[str], np.ndarray]:
    ids, labels = [], []
    for number, (eyes, suffixes, eye_labels) in enumerate(patients):
        for eye, suffix, label in zip(eyes, suffixes, eye_labels, strict=False):
            ids.append(f"{number}_{eye}{'.jpg' if suffix else ''}")
            labels.append(label)
    return ids, np.array(labels, dtype=int).reshape(-1, len(LABELS))


def _realistic(seed: int, n_images: int = 800, n_patients: int = 420) -> tuple[list[str], np.ndarray]:
    """ODIR-like pool: most patients with both eyes, D 0.65 / G 0.2 / A 0.18, bilateral disease common."""
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.65, 0.2, 0.18])
    ids, labels = [], []
    for patient in range(n_patients):
        base = rng.random(3) < prevalence
        eyes = ("left", "right") if patient < n_images - n_patients else ("left",)
        for eye in eyes:
            ids.append(f"{1000 + patient}_{eye}.jpg")
            labels.append(np.where(rng.random(3) < 0.7, base, rng.random(3) < prevalence))
    order = rng.permutation(len(ids))
    return [ids[i] for i in order], np.array(labels, dtype=int)[order]


@settings(max_examples=150, deadline=None)
@given(patients=st.lists(PATIENT, min_size=1, max_size=25), folds=st.integers(2, 6), seed=st.integers(0, 2**32 - 1))
def test_a_patient_is_never_split_and_every_fold_has_patients(patients: list, folds: int, seed: int) -> None:
    ids, labels = _pool(patients)
    if folds > len(patients):
        with pytest.raises(OdirError, match=f"{folds} folds need at least {folds} patients"):
            assign_folds(ids, labels, folds, seed)
        return
    assigned = assign_folds(ids, labels, folds, seed)
    assert assigned.shape == (len(ids),) and assigned.dtype.kind == "i"
    fold_of: dict[str, int] = {}
    for image_id, fold in zip(ids, assigned, strict=True):
        assert fold_of.setdefault(patient_of(image_id), int(fold)) == fold, f"patient of {image_id} split"
    assert set(assigned.tolist()) == set(range(folds))
    table = fold_table(ids, labels, assigned)
    assert table["patients"].sum() == len(patients) and (table["patients"] > 0).all()


def test_an_empty_fold_gets_the_smallest_patient_of_the_fullest_fold() -> None:
    patients = np.array(["1", "1", "2", "3", "3", "4"], dtype=object)
    assigned = np.array([0, 0, 0, 0, 0, 1])
    _fill_empty_folds(assigned, patients, folds=3)
    assert assigned.tolist() == [0, 0, 2, 0, 0, 1]


@pytest.mark.parametrize("seed", range(10))
def test_two_glaucoma_patients_go_to_different_folds(seed: int) -> None:
    ids = [f"{patient}_{eye}.jpg" for patient in range(10) for eye in ("left", "right")]
    labels = np.zeros((20, 3), dtype=int)
    labels[[4, 5, 14, 15], LABELS.index("G")] = 1  # patients 2 and 7, both eyes
    assigned = assign_folds(ids, labels, folds=2, seed=seed)
    assert assigned[4] != assigned[14]
    table = fold_table(ids, labels, assigned)
    assert table["G"].tolist() == [2, 2] and table["patients"].tolist() == [5, 5]


def test_realistic_pool_is_balanced_within_two_of_the_ideal() -> None:
    ids, labels = _realistic(seed=0)
    table = fold_table(ids, labels, assign_folds(ids, labels, folds=5, seed=42))
    ideal = labels.sum(axis=0) / 5
    assert (np.abs(table[list(LABELS)].to_numpy() - ideal) <= 2).all(), table
    assert (np.abs(table["images"] - len(ids) / 5) <= 2).all(), table


def test_the_same_seed_gives_the_same_folds_and_another_seed_others() -> None:
    ids, labels = _realistic(seed=1, n_images=200, n_patients=110)
    first = assign_folds(ids, labels, folds=5, seed=7)
    np.testing.assert_array_equal(first, assign_folds(list(ids), labels.copy(), folds=5, seed=7))
    assert not np.array_equal(first, assign_folds(ids, labels, folds=5, seed=8))


def test_fold_table_counts_images_patients_and_positives() -> None:
    ids = ["1_left.jpg", "1_right.jpg", "2_left", "3_right.jpg"]
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1]])
    table = fold_table(ids, labels, np.array([0, 0, 1, 1]))
    assert table.index.name == "fold" and list(table.columns) == ["images", "patients", *LABELS]
    assert table.to_dict("index") == {
        0: {"images": 2, "patients": 1, "D": 2, "G": 1, "A": 0},
        1: {"images": 2, "patients": 2, "D": 1, "G": 0, "A": 2},
    }


@pytest.mark.parametrize("folds", [1, 0, -3])
def test_fewer_than_two_folds_is_refused(folds: int) -> None:
    with pytest.raises(OdirError, match=f"cross-validation needs folds >= 2; got {folds}"):
        assign_folds(["1_left", "2_left", "3_left"], np.zeros((3, 3), dtype=int), folds, seed=0)


def test_more_folds_than_patients_is_refused() -> None:
    ids = ["1_left.jpg", "1_right.jpg", "2_left.jpg", "2_right", "3_left"]
    with pytest.raises(OdirError, match=r"^5 folds need at least 5 patients; the data has 3$"):
        assign_folds(ids, np.zeros((5, 3), dtype=int), folds=5, seed=0)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((2, 3)), r"labels must have shape \(3, 3\)"),
        (np.zeros((3, 2)), r"labels must have shape \(3, 3\)"),
        (np.array([[0, 1, 2], [0, 0, 0], [1, 1, 1]]), "labels must be 0 or 1"),
        (np.array([[0, 1, np.nan], [0, 0, 0], [1, 1, 1]]), "labels must be 0 or 1"),
    ],
)
def test_labels_that_do_not_fit_the_ids_are_refused(labels: np.ndarray, message: str) -> None:
    with pytest.raises(OdirError, match=message):
        assign_folds(["1_left", "2_left", "3_left"], labels, folds=2, seed=0)


def test_cv_spec_defaults_and_strictness() -> None:
    spec = CVSpec(folds=5)
    assert (spec.folds, spec.group, spec.seed) == (5, "patient", 42)
    assert CVSpec.model_validate({"folds": 5, "group": "patient", "seed": 42}) == spec
    with pytest.raises(ValidationError):
        spec.folds = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        CVSpec(folds=5, shuffle=True)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="group"):
        CVSpec(folds=5, group="eye")  # type: ignore[arg-type]


@pytest.mark.parametrize("folds", [1, 0, -1])
def test_cv_spec_with_fewer_than_two_folds_fails_validation(folds: int) -> None:
    with pytest.raises(ValidationError, match="folds must be >= 2"):
        CVSpec(folds=folds)
