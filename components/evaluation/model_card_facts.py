"""What a model card says about one registered version, as plain data: :mod:`components.evaluation.model_card`
renders it, ``steps.model_card`` gathers it from the tracking store.

Metrics keep the names the steps log them under, without the split's prefix: ``f1_macro``, ``auroc_D``, and the 95%
interval of a metric as ``<metric>_ci_low`` / ``<metric>_ci_high`` beside it. Classes are :data:`components.LABELS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of the version: a split, how it was predicted, and the metrics (without the split prefix)."""

    split: str  # train, val, offsite_test, onsite_test, or cv (out-of-fold scores on train + val)
    views: tuple[str, ...]  # the TTA views; () or ("identity",) is no TTA
    thresholds: str  # where the thresholds came from, in words
    metrics: dict[str, float]
    step: str  # the step whose run logged the metrics: evaluate, train (cv) or ensemble
    per_class_at: str  # where its per-class results are kept, named when the card has no room for them
    scored_images: int | None = None  # fewer than the split's images when shared patients were left out


@dataclass(frozen=True)
class DatasetInput:
    """The dataset the producing run logged as its input."""

    name: str
    digest: str
    source: str  # the folder or URI it was read from


@dataclass(frozen=True)
class ProducingRun:
    """The run that produced the version: a member's training run or the ensemble run."""

    run_id: str
    name: str  # the run's name as the UI shows it
    params: dict[str, str]  # a member's spec (backbone, loss, mode, epochs, monitor, ...); the ensemble's tta_views
    metrics: dict[str, float]  # a member's best_epoch and best_val_<metric>
    dataset: DatasetInput | None = None


@dataclass(frozen=True)
class Thresholds:
    """Per-class decision thresholds, the grid they were searched on and each class's objective."""

    values: dict[str, float]
    grid: str
    objectives: dict[str, str] | None = None  # per class; None: F1 for every class


@dataclass(frozen=True)
class Member:
    """One member of an ensemble: its registered version, its recipe, its weight and its temperatures."""

    name: str
    uri: str | None  # models:/NAME/VERSION, None when not recorded
    weight: float | None
    spec: dict[str, str] = field(default_factory=dict)  # the member's training params (backbone, loss, mode, ...)
    temperatures: dict[str, float] | None = None  # per class; None: not calibrated


@dataclass(frozen=True)
class Promotion:
    """What the promote step decided about the version, as it logged it (values are the logged strings)."""

    decision: str = "?"  # champion, challenger, ...
    split: str = "?"
    metric: str = "f1_macro"
    champion_version: str = "none"  # the champion it was compared with ("none": there was none)
    prob_better: str | None = None  # P(better) from the paired bootstrap over patients
    min_probability: str | None = None  # the P(better) promotion needs
    difference_ci: str | None = None
    evidence: str | None = None  # why there was no comparison, when there was none


@dataclass(frozen=True)
class SplitCounts:
    """Images, patients, positives per class and images without any label, of one split."""

    images: int
    patients: int
    positives: dict[str, int]
    no_label: int = 0


@dataclass(frozen=True)
class DataReport:
    """The ingest step's counts of the data the version was trained and scored on."""

    splits: dict[str, SplitCounts]
    shared_patients: dict[str, int] = field(default_factory=dict)  # "train/val" -> patients with images in both


@dataclass(frozen=True)
class RecordedScore:
    """An F1 macro the version carries as a tag (scored by the promote step, without TTA), and the data it was on."""

    split: str
    f1_macro: float
    digest: str | None  # the data digest it was scored on; None: not recorded


@dataclass(frozen=True)
class Facts:
    """Everything the card says about one registered version."""

    name: str
    version: str
    kind: str  # member or ensemble
    split_mode: str  # given (train, val, offsite_test) or cv (patient-grouped folds over train + val)
    aliases: tuple[str, ...] = ()
    data_digest: str | None = None  # None: not recorded
    profile: str | None = None
    spec_key: str | None = None  # a member's
    code_fingerprint: str | None = None  # a member's
    ensemble_key: str | None = None  # an ensemble's
    run: ProducingRun | None = None  # None: not found
    data_report: DataReport | None = None  # None: no ingest report for the data digest
    evaluations: list[Evaluation] = field(default_factory=list)  # in any order
    recorded_scores: list[RecordedScore] = field(default_factory=list)
    member_thresholds: Thresholds | None = None  # a member's thresholds tuned on val (not part of the version)
    members: list[Member] = field(default_factory=list)  # the ensemble's members
    ensemble_thresholds: Thresholds | None = None
    promotion: Promotion | None = None  # the newest promote step's decision about this version
    cv: str | None = None  # the cross-validation's folds, seed and views, as the train step tags it
