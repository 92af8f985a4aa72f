"""Per-class decision thresholds tuned on validation probabilities.

The study searched 0.30–0.65 in steps of 0.05 for the threshold that maximises each class's F1; that grid is the
default so its results can be reproduced. Ties (several thresholds with the same best F1) go to the threshold
closest to 0.5, then to the lower one: the simplest choice that the data cannot tell apart from the others.
Tune on validation predictions only, never on a test split.

F1 is one objective among several, chosen per class by name (:func:`parse_objective`, :data:`OBJECTIVES`):

- ``f1`` (the default): the highest F1.
- ``f1_course``: the highest F1 averaged over both classes of the disease (how the study's course scored,
  ``f1_course`` in :mod:`components.evaluation.metrics`).
- ``youden``: the highest Youden index, sensitivity + specificity - 1 (Youden, *Cancer* 1950).
- ``sens_at_spec:<level>``: the highest sensitivity among the thresholds with specificity >= level; a screening
  programme that caps false referrals.
- ``spec_at_sens:<level>``: the highest specificity among the thresholds with sensitivity >= level; one that caps
  missed disease.

For the two constrained objectives, equal sensitivity (resp. specificity) goes to the threshold with more of the
other rate (it costs nothing), then the usual tie rule; when no threshold of the grid meets the floor, a warning
says so and the threshold closest to meeting it is taken. A rate a class cannot have in the tuning set (sensitivity
without positives) counts as 0.

Thresholds tuned on one set of predictions do not always transfer to new patients (on ODIR, F1-tuned thresholds
fit on the training pool's out-of-fold predictions scored below 0.5 on a held-back split), so how the tuned value
is used is a **strategy** (:data:`STRATEGIES`, :func:`fit_thresholds`): ``tuned`` as is, ``shrunk`` halfway back
towards 0.5, ``fixed`` at 0.5, or ``prevalence``: per class the threshold that predicts as many positives as the
fitting set has (no objective at all). docs/results.md compares them under nested patient-grouped CV.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from components import LABELS
from components.evaluation.metrics import DEFAULT_THRESHOLD, check_labels_and_scores

STUDY_GRID: tuple[float, ...] = tuple(float(t) for t in np.round(np.arange(0.30, 0.65 + 1e-9, 0.05), 2))


def fine_grid(step: float = 0.01, low: float = 0.05, high: float = 0.95) -> tuple[float, ...]:
    """An evenly spaced grid from ``low`` to ``high`` inclusive."""
    if not 0.0 < step <= high - low or not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1 and 0 < step <= high - low, got {low}, {high}, {step}")
    count = round((high - low) / step) + 1
    return tuple(float(t) for t in np.round(np.linspace(low, high, count), 6))


@dataclass(frozen=True)
class ThresholdResult:
    """Tuned thresholds and the per-class F1 they give, beside the F1 at the default 0.5.

    Attributes:
        thresholds: ``(3,)`` chosen threshold per class, ``LABELS`` order.
        f1: ``(3,)`` F1 of each class at its chosen threshold (whatever the objective that chose it).
        f1_default: ``(3,)`` F1 of each class at 0.5.
        objectives: the objective of each class, as :func:`parse_objective` reads it back.
    """

    thresholds: np.ndarray
    f1: np.ndarray
    f1_default: np.ndarray
    objectives: tuple[str, ...] = ("f1",) * len(LABELS)

    def as_dict(self) -> dict[str, float]:
        """``{"D": t, "G": t, "A": t}``, for JSON."""
        return {label: float(t) for label, t in zip(LABELS, self.thresholds, strict=True)}

    @property
    def f1_gain(self) -> float:
        """Macro F1 gain over the default threshold."""
        return float(self.f1.mean() - self.f1_default.mean())


def _grid_counts(y_true: np.ndarray, scores: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, ...]:
    """TP, FP, FN, TN of one binary column at each threshold of ``grid`` (predicting ``score >= t``)."""
    predicted = scores[None, :] >= grid[:, None]
    positive = y_true[None, :] == 1
    return (
        (predicted & positive).sum(axis=1),
        (predicted & ~positive).sum(axis=1),
        (~predicted & positive).sum(axis=1),
        (~predicted & ~positive).sum(axis=1),
    )


def _rate(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator``, 0 where the denominator is 0."""
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1), 0.0)


def f1_per_threshold(y_true: np.ndarray, scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Positive-class F1 of one binary column at each threshold of ``grid`` (0 where it is undefined)."""
    tp, fp, fn, _ = _grid_counts(y_true, scores, grid)
    return _rate(2 * tp, 2 * tp + fp + fn)


def rates_per_threshold(y_true: np.ndarray, scores: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity of one binary column at each threshold of ``grid`` (0 where undefined)."""
    tp, fp, fn, tn = _grid_counts(y_true, scores, grid)
    return _rate(tp, tp + fn), _rate(tn, tn + fp)


# --- objectives ------------------------------------------------------------------------------------------------------

Scores = tuple[np.ndarray, np.ndarray, bool]
"""What an objective gives each grid threshold: the value to maximise, the tie-breaker, and whether any threshold
met the objective's floor (always True for the unconstrained ones)."""


def _f1(y_true: np.ndarray, scores: np.ndarray, grid: np.ndarray, level: float | None) -> Scores:
    return f1_per_threshold(y_true, scores, grid), np.zeros(len(grid)), True


def _f1_course(y_true: np.ndarray, scores: np.ndarray, grid: np.ndarray, level: float | None) -> Scores:
    tp, fp, fn, tn = _grid_counts(y_true, scores, grid)
    return (_rate(2 * tp, 2 * tp + fp + fn) + _rate(2 * tn, 2 * tn + fn + fp)) / 2, np.zeros(len(grid)), True


def _youden(y_true: np.ndarray, scores: np.ndarray, grid: np.ndarray, level: float | None) -> Scores:
    sensitivity, specificity = rates_per_threshold(y_true, scores, grid)
    return sensitivity + specificity - 1.0, np.zeros(len(grid)), True


def _best_with_floor(best: np.ndarray, held: np.ndarray, level: float) -> Scores:
    """Maximise ``best`` where ``held >= level`` (then the most ``held``); with no such threshold, maximise
    ``held`` (the threshold closest to the floor), then ``best``."""
    feasible = held >= level - 1e-12
    if not feasible.any():
        return held, best, False
    return np.where(feasible, best, -np.inf), held, True


def _sens_at_spec(y_true: np.ndarray, scores: np.ndarray, grid: np.ndarray, level: float | None) -> Scores:
    sensitivity, specificity = rates_per_threshold(y_true, scores, grid)
    return _best_with_floor(sensitivity, specificity, float(level))


def _spec_at_sens(y_true: np.ndarray, scores: np.ndarray, grid: np.ndarray, level: float | None) -> Scores:
    sensitivity, specificity = rates_per_threshold(y_true, scores, grid)
    return _best_with_floor(specificity, sensitivity, float(level))


@dataclass(frozen=True)
class ObjectiveKind:
    """A registry entry: how to score a grid, and whether the name takes a ``:<level>``."""

    score: Callable[[np.ndarray, np.ndarray, np.ndarray, float | None], Scores]
    takes_level: bool
    floor_name: str = ""


OBJECTIVES: dict[str, ObjectiveKind] = {
    "f1": ObjectiveKind(_f1, takes_level=False),
    "f1_course": ObjectiveKind(_f1_course, takes_level=False),
    "youden": ObjectiveKind(_youden, takes_level=False),
    "sens_at_spec": ObjectiveKind(_sens_at_spec, takes_level=True, floor_name="specificity"),
    "spec_at_sens": ObjectiveKind(_spec_at_sens, takes_level=True, floor_name="sensitivity"),
}
"""Threshold objectives by name; see the module docstring."""


@dataclass(frozen=True)
class Objective:
    """One objective of :data:`OBJECTIVES`, with its level for the constrained ones."""

    name: str
    level: float | None = None

    def __str__(self) -> str:
        return self.name if self.level is None else f"{self.name}:{self.level!r}"

    def score(self, y_true: np.ndarray, scores: np.ndarray, grid: np.ndarray) -> Scores:
        """Value, tie-breaker and feasibility at each threshold of ``grid``."""
        return OBJECTIVES[self.name].score(y_true, scores, grid, self.level)


def _valid_names() -> str:
    return ", ".join(f"{name}:<level>" if kind.takes_level else name for name, kind in OBJECTIVES.items())


def parse_objective(text: str) -> Objective:
    """``"f1"``, ``"youden"``, ``"sens_at_spec:0.9"``, ``"spec_at_sens:0.9"`` as an :class:`Objective`.

    Raises:
        ValueError: for an unknown name, a missing or unexpected level, or a level outside (0, 1).
    """
    name, _, level_text = str(text).strip().partition(":")
    if name not in OBJECTIVES:
        raise ValueError(f"unknown threshold objective {text!r}; valid: {_valid_names()}")
    if not OBJECTIVES[name].takes_level:
        if level_text:
            raise ValueError(f"threshold objective {name!r} takes no level, got {text!r}")
        return Objective(name)
    try:
        level = float(level_text)
    except ValueError:
        raise ValueError(
            f"threshold objective {name!r} needs a level in (0, 1), e.g. {name}:0.9; got {text!r}"
        ) from None
    if not 0.0 < level < 1.0:
        raise ValueError(f"the level of threshold objective {text!r} must be in (0, 1), got {level}")
    return Objective(name, level)


ObjectiveSpec = str | Objective
PerClass = ObjectiveSpec | Sequence[ObjectiveSpec] | Mapping[str, ObjectiveSpec] | None


def objectives_per_class(objectives: PerClass) -> tuple[Objective, ...]:
    """One :class:`Objective` per class in ``LABELS`` order.

    ``objectives``: ``None`` (F1 everywhere), one objective for every class, one per class in ``LABELS`` order, or
    ``{"G": "sens_at_spec:0.9"}`` (the classes not named keep F1).

    Raises:
        ValueError: for a bad objective, the wrong number of them or an unknown class code.
    """
    if objectives is None or isinstance(objectives, str | Objective):
        return (_as_objective(objectives or "f1"),) * len(LABELS)
    if isinstance(objectives, Mapping):
        unknown = set(objectives) - set(LABELS)
        if unknown:
            raise ValueError(f"unknown classes {sorted(unknown)} in threshold objectives; classes: {', '.join(LABELS)}")
        return tuple(_as_objective(objectives.get(label, "f1")) for label in LABELS)
    if len(objectives) != len(LABELS):
        raise ValueError(f"need one threshold objective per class ({', '.join(LABELS)}), got {len(objectives)}")
    return tuple(_as_objective(objective) for objective in objectives)


def _as_objective(objective: ObjectiveSpec) -> Objective:
    return objective if isinstance(objective, Objective) else parse_objective(objective)


def _pick(grid: np.ndarray, value: np.ndarray, tie_breaker: np.ndarray | None = None) -> int:
    """Index of the best value; ties go to the best ``tie_breaker`` (when given), then to the threshold closest
    to 0.5, then the lower one."""
    best = np.flatnonzero(np.isclose(value, value.max(), rtol=0.0, atol=1e-12))
    if tie_breaker is not None:
        best = best[np.isclose(tie_breaker[best], tie_breaker[best].max(), rtol=0.0, atol=1e-12)]
    order = sorted(best, key=lambda i: (abs(grid[i] - DEFAULT_THRESHOLD), grid[i]))
    return int(order[0])


def tune_thresholds(
    y_true: np.ndarray, probs: np.ndarray, grid: tuple[float, ...] = STUDY_GRID, objectives: PerClass = None
) -> ThresholdResult:
    """The per-class threshold of ``grid`` that best meets each class's objective on these (validation)
    predictions: F1 unless ``objectives`` says otherwise (see :func:`objectives_per_class`).

    Raises:
        ValueError: for mismatched shapes, non-0/1 labels, non-finite scores, an empty grid or bad objectives.
    """
    y_true, probs = check_labels_and_scores(y_true, probs)
    grid_array = np.asarray(grid, dtype=np.float64)
    if grid_array.ndim != 1 or grid_array.size == 0:
        raise ValueError("the threshold grid is empty")
    per_class = objectives_per_class(objectives)
    chosen, best_f1, default_f1 = [], [], []
    for column, (label, objective) in enumerate(zip(LABELS, per_class, strict=True)):
        truth, score = y_true[:, column], probs[:, column]
        value, tie_breaker, feasible = objective.score(truth, score, grid_array)
        if not feasible:
            floor = OBJECTIVES[objective.name].floor_name
            warnings.warn(
                f"class {label}: no threshold of the grid reaches {floor} {objective.level!r} ({objective}); "
                f"taking the one with the highest {floor}",
                stacklevel=2,
            )
        index = _pick(grid_array, value, tie_breaker)
        chosen.append(grid_array[index])
        best_f1.append(f1_per_threshold(truth, score, grid_array[index : index + 1])[0])
        default_f1.append(f1_per_threshold(truth, score, np.array([DEFAULT_THRESHOLD]))[0])
    names = tuple(str(objective) for objective in per_class)
    return ThresholdResult(np.array(chosen), np.array(best_f1), np.array(default_f1), names)


# --- strategies ------------------------------------------------------------------------------------------------------

STRATEGIES = ("tuned", "shrunk", "fixed", "prevalence")
"""How thresholds are fit; see the module docstring."""
SHRINKAGE = 0.5  # ``shrunk`` keeps this share of the tuned threshold's distance from 0.5


def fit_thresholds(
    y_true: np.ndarray, probs: np.ndarray, grid: tuple[float, ...] = STUDY_GRID, objectives: PerClass = None,
    strategy: str = "tuned",
) -> ThresholdResult:  # fmt: skip
    """Per-class thresholds by ``strategy`` (:data:`STRATEGIES`) on these predictions; ``grid`` and ``objectives``
    are those of :func:`tune_thresholds`, which ``tuned`` and ``shrunk`` start from.

    Raises:
        ValueError: for an unknown strategy, or what :func:`tune_thresholds` refuses.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown threshold strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    if strategy == "tuned":
        return tune_thresholds(y_true, probs, grid, objectives)
    y_true, probs = check_labels_and_scores(y_true, probs)
    if strategy == "shrunk":
        tuned = tune_thresholds(y_true, probs, grid, objectives)
        thresholds = DEFAULT_THRESHOLD + SHRINKAGE * (tuned.thresholds - DEFAULT_THRESHOLD)
        names = tuple(f"shrunk {name}" for name in tuned.objectives)
    elif strategy == "fixed":
        thresholds, names = np.full(len(LABELS), DEFAULT_THRESHOLD), ("fixed",) * len(LABELS)
    else:
        thresholds, names = prevalence_thresholds(y_true, probs), ("prevalence",) * len(LABELS)
    f1 = [f1_per_threshold(y_true[:, c], probs[:, c], thresholds[c : c + 1])[0] for c in range(len(LABELS))]
    at_default = [f1_per_threshold(y_true[:, c], probs[:, c], np.array([DEFAULT_THRESHOLD]))[0]
                  for c in range(len(LABELS))]  # fmt: skip
    return ThresholdResult(np.asarray(thresholds, dtype=np.float64), np.array(f1), np.array(at_default), names)


def prevalence_thresholds(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per class the threshold that predicts as many positives as there are: the k-th highest probability for k
    positives (ties may add more); above every probability (nothing predicted) for a class without positives."""
    thresholds = []
    for column in range(y_true.shape[1]):
        positives = int(y_true[:, column].sum())
        ranked = np.sort(probs[:, column])[::-1]
        thresholds.append(float(ranked[positives - 1]) if positives else float(np.nextafter(ranked[0], np.inf)))
    return np.array(thresholds)
