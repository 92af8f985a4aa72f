"""Patient bootstrap against the exact bootstrap distribution of a 3-patient set, and its fast paths against the
reports they mirror."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from components.evaluation.bootstrap import (
    ThresholdMetrics,
    bootstrap_samples,
    clinical_metrics,
    paired_bootstrap,
    patient_bootstrap,
    percentile_interval,
    pick,
    report_metrics,
)
from components.evaluation.metrics import clinical_report, f1_macro, multilabel_report

# Three patients, five images; column D at threshold 0.5 (G and A are filler):
#   p1: (y 1, p 0.8) TP, (y 0, p 0.6) FP      p2: (y 1, p 0.3) FN      p3: (y 0, p 0.2) TN, (y 1, p 0.9) TP
# Per patient (TP, FP, FN): p1 (1, 1, 0), p2 (0, 0, 1), p3 (1, 0, 0); F1 = 2TP / (2TP + FP + FN).
# The exact bootstrap distribution: the 10 multisets (k1, k2, k3) of 3 draws, probability 3!/(k1! k2! k3!) / 27:
#   (3,0,0) 1/27: TP3 FP3     -> 2/3     (0,3,0) 1/27: FN3 -> 0          (0,0,3) 1/27: TP3 -> 1
#   (2,1,0) 3/27: TP2 FP2 FN1 -> 4/7     (2,0,1) 3/27: TP3 FP2 -> 3/4    (1,2,0) 3/27: TP1 FP1 FN2 -> 2/5
#   (0,2,1) 3/27: TP1 FN2     -> 1/2     (1,0,2) 3/27: TP3 FP1 -> 6/7    (0,1,2) 3/27: TP2 FN1 -> 4/5
#   (1,1,1) 6/27: TP2 FP1 FN1 -> 2/3
# Sorted with cumulative probability: 0 (1/27), 2/5 (4/27), 1/2 (7/27), 4/7 (10/27), 2/3 (17/27), 3/4 (20/27),
# 4/5 (23/27), 6/7 (26/27), 1 (27/27). The 2.5% / 97.5% quantiles are 0 and 1, the 10% / 90% ones 2/5 and 6/7.
PATIENTS = ["p1", "p1", "p2", "p3", "p3"]
LABELS_3P = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 1, 1], [1, 0, 0]])
PROBS_3P = np.array([[0.8, 0.1, 0.7], [0.6, 0.9, 0.2], [0.3, 0.4, 0.1], [0.2, 0.3, 0.6], [0.9, 0.2, 0.4]])
EXACT_F1_D = {2 / 3: 7 / 27, 0.0: 1 / 27, 1.0: 1 / 27, 4 / 7: 3 / 27, 3 / 4: 3 / 27, 2 / 5: 3 / 27, 1 / 2: 3 / 27,
              6 / 7: 3 / 27, 4 / 5: 3 / 27}  # fmt: skip


def _exact_distribution() -> dict[float, float]:
    """Brute force: every multiset of 3 patients drawn with replacement, with its multinomial probability."""
    rows = {patient: [i for i, p in enumerate(PATIENTS) if p == patient] for patient in ("p1", "p2", "p3")}
    distribution: Counter[float] = Counter()
    for multiset in itertools.combinations_with_replacement(rows, 3):
        draws = Counter(multiset)
        probability = math.factorial(3) / math.prod(math.factorial(k) for k in draws.values()) / 27
        index = [i for patient in multiset for i in rows[patient]]  # a patient drawn twice comes twice
        f1 = multilabel_report(LABELS_3P[index], PROBS_3P[index])["f1_D"]
        distribution[round(f1, 12)] += probability
    return dict(distribution)


@pytest.mark.filterwarnings("ignore:(AUROC|AP) is undefined")  # G and A of some multisets; only D is checked
def test_enumeration_matches_the_hand_table() -> None:
    exact = _exact_distribution()
    assert sorted(exact) == pytest.approx(sorted(EXACT_F1_D))
    for value, probability in EXACT_F1_D.items():
        assert exact[round(value, 12)] == pytest.approx(probability)


def _f1_d(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """F1 of D at 0.5 in plain numpy: the generic (one call per resample) path at a cost a test can afford."""
    predicted, positive = p[:, 0] >= 0.5, y[:, 0] == 1
    tp, wrong = (predicted & positive).sum(), (predicted != positive).sum()
    return {"f1_D": 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0}


@pytest.mark.parametrize("metrics", [ThresholdMetrics(), _f1_d], ids=["vectorised", "generic"])
def test_bootstrap_approaches_the_exact_distribution(metrics) -> None:
    resamples = 20_000
    f1 = bootstrap_samples(metrics, LABELS_3P, PROBS_3P, PATIENTS, resamples=resamples, seed=0)["f1_D"]
    expectation = sum(value * p for value, p in EXACT_F1_D.items())  # 17.302381/27 = 0.6408...
    spread = math.sqrt(sum((value - expectation) ** 2 * p for value, p in EXACT_F1_D.items()))
    assert abs(f1.mean() - expectation) < 4 * spread / math.sqrt(resamples)
    frequencies = Counter(np.round(f1, 12))
    for value, probability in EXACT_F1_D.items():
        assert frequencies[round(value, 12)] / resamples == pytest.approx(probability, abs=4 * 0.5 / resamples**0.5)


def test_percentile_interval_is_the_exact_quantile() -> None:
    intervals = [patient_bootstrap(ThresholdMetrics(), LABELS_3P, PROBS_3P, PATIENTS, 20_000, 0, level)["f1_D"]
                 for level in (0.95, 0.8)]  # fmt: skip
    assert intervals == [pytest.approx((0.0, 1.0)), pytest.approx((0.4, 6 / 7))]


def test_interval_of_a_two_patient_mean() -> None:
    # One image each, values 0 and 1: the resample mean is 0, 1/2 or 1 with probability 1/4, 1/2, 1/4.
    labels, probs = np.zeros((2, 3)), np.array([[0.0] * 3, [1.0] * 3])
    mean = lambda y, p: {"mean": float(p[:, 0].mean())}  # noqa: E731
    assert patient_bootstrap(mean, labels, probs, ["a", "b"], 4000, 0, 0.95)["mean"] == (0.0, 1.0)
    assert patient_bootstrap(mean, labels, probs, ["a", "b"], 4000, 0, 0.4)["mean"] == (0.5, 0.5)  # 30%..70%


def test_seeds_reproduce_and_differ() -> None:
    first = bootstrap_samples(ThresholdMetrics(), LABELS_3P, PROBS_3P, PATIENTS, 200, seed=7)
    again = bootstrap_samples(ThresholdMetrics(), LABELS_3P, PROBS_3P, PATIENTS, 200, seed=7)
    other = bootstrap_samples(ThresholdMetrics(), LABELS_3P, PROBS_3P, PATIENTS, 200, seed=8)
    assert all(np.array_equal(first[key], again[key], equal_nan=True) for key in first)
    assert not np.array_equal(first["f1_D"], other["f1_D"])


def _dataset(images: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Two eyes per patient, tied scores, and a rare class A (one positive patient) so that some resamples have
    no A positive."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, (images, 3))
    labels[:, 2] = 0
    labels[:2, 2] = 1
    probs = np.round(np.clip(0.3 * labels + 0.7 * rng.random((images, 3)), 0, 1), 1)
    return labels, probs, [f"patient{i // 2}" for i in range(images)]


def test_fast_paths_equal_the_reports_on_every_resample() -> None:
    labels, probs, patients = _dataset(30)
    thresholds = np.array([0.5, 0.4, 0.6])

    def reports(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        return multilabel_report(y, p, thresholds) | clinical_report(y, p, thresholds)

    slow = bootstrap_samples(reports, labels, probs, patients, resamples=60, seed=3)
    fast = bootstrap_samples(clinical_metrics(thresholds), labels, probs, patients, resamples=60, seed=3)
    assert set(fast) == set(slow)
    assert np.isnan(slow["auroc_A"]).any() and np.isnan(slow["sensitivity_A"]).any()  # the edge cases are there
    for key in slow:
        np.testing.assert_allclose(fast[key], slow[key], atol=1e-12, err_msg=key)
    assert set(report_metrics(thresholds)(labels, probs)) == set(multilabel_report(labels, probs, thresholds))


def test_undefined_resamples_are_left_out() -> None:
    assert percentile_interval(np.array([np.nan] * 6 + [1.0] * 4)) == (pytest.approx(np.nan, nan_ok=True),) * 2
    assert percentile_interval(np.array([np.nan] * 5 + [1.0, 2.0, 3.0, 4.0, 5.0]), 0.5) == (2.0, 4.0)
    labels, probs, patients = _dataset(30)  # A's only positive patient is missing from about (14/15)^15 = 35%
    samples = bootstrap_samples(report_metrics(), labels, probs, patients, 400, 0)["auroc_A"]
    assert 0.25 < np.isnan(samples).mean() < 0.45
    interval = patient_bootstrap(report_metrics(), labels, probs, patients, 400, 0)["auroc_A"]
    assert interval == pytest.approx(tuple(np.percentile(samples[~np.isnan(samples)], [2.5, 97.5])))


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="one patient per image"):
        patient_bootstrap(ThresholdMetrics(), LABELS_3P, PROBS_3P, PATIENTS[:4])
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
        patient_bootstrap(ThresholdMetrics(), LABELS_3P, PROBS_3P, PATIENTS, level=1.0)
    with pytest.raises(ValueError, match="at least one resample"):
        patient_bootstrap(ThresholdMetrics(), LABELS_3P, PROBS_3P, PATIENTS, resamples=0)


def test_paired_bootstrap() -> None:
    labels, probs, patients = _dataset(60)
    rng = np.random.default_rng(5)
    noise = rng.random(probs.shape)
    better = np.where(labels == 1, 0.9, 0.1)
    f1 = pick(report_metrics(), "f1_macro")

    clear = paired_bootstrap(f1, labels, noise, better, patients, resamples=500)
    assert clear.prob_b_better > 0.99 and clear.interval[0] > 0
    assert clear.score_b == 1.0 and clear.difference == pytest.approx(1.0 - clear.score_a)
    assert clear.interval_b[1] == 1.0 and clear.interval_a[1] < clear.interval_b[0]

    same = paired_bootstrap(f1, labels, noise, noise, patients, resamples=500)
    assert same.prob_b_better == 0.5 and same.difference == 0.0 and same.interval == (0.0, 0.0)

    generic = paired_bootstrap(lambda y, p: f1_macro(y, p), labels, noise, probs, patients, resamples=100, seed=2)
    fast = paired_bootstrap(f1, labels, noise, probs, patients, resamples=100, seed=2)
    assert generic == fast  # same resamples, same values, vectorised or not

    own = paired_bootstrap(f1, labels, probs, probs, patients, 100, metric_b=pick(report_metrics(0.3), "f1_macro"))
    assert own.score_b == pytest.approx(f1_macro(labels, probs, 0.3))


def test_paired_bootstrap_over_seed_repeats_scores_each_recipe_by_its_mean() -> None:
    """Repeats of a recipe (seeds) count by their mean: on all images and in every resample, so the difference of
    two recipes is the mean of the per-seed differences, resample by resample."""
    labels, probs, patients = _dataset(60)
    rng = np.random.default_rng(7)
    a_runs = [rng.random(probs.shape) for _ in range(3)]
    b_runs = [np.clip(probs + rng.normal(0, 0.2, probs.shape), 0, 1) for _ in range(3)]
    f1 = pick(report_metrics(), "f1_macro")

    pooled = paired_bootstrap(f1, labels, a_runs, b_runs, patients, resamples=200, seed=4)
    per_seed = [
        paired_bootstrap(f1, labels, a, b, patients, resamples=200, seed=4) for a, b in zip(a_runs, b_runs, strict=True)
    ]
    assert pooled.score_a == pytest.approx(np.mean([f1_macro(labels, a) for a in a_runs]))
    assert pooled.score_b == pytest.approx(np.mean([r.score_b for r in per_seed]))
    assert pooled.difference == pytest.approx(np.mean([r.difference for r in per_seed]))

    one = paired_bootstrap(f1, labels, [a_runs[0]], [b_runs[0]], patients, resamples=200, seed=4)
    assert one == per_seed[0]  # a list of one repeat is that run
    with pytest.raises(ValueError, match="60 labels but 59 predictions"):
        paired_bootstrap(f1, labels, [a_runs[0][:59]], b_runs, patients)
