"""The model card of one registered version, as Markdown, from plain facts (:mod:`model_card_facts`): no store, no I/O.

The card says what the version is (identity, protocol, promotion), the data it was trained and scored on, its recipe
(a member's spec and epochs, an ensemble's members, weights, TTA views, calibration), its thresholds and their
objective, its results with their 95% intervals per split, the intended use and the known limitations. Every figure
names its split and protocol (given splits or patient-grouped CV, and where the thresholds were tuned); a metric no
run logged reads "not measured".

The card fits the registry's 5000 characters (:func:`fitted`; PostgreSQL enforces the column's length): when the full
card is longer, the per-class tables of val, then all of them, are left out, each named with where it is kept.
``steps.model_card`` gathers the facts from MLflow and publishes the card.
"""

from __future__ import annotations

import dataclasses

from components import LABELS
from components.evaluation.model_card_facts import DataReport, Evaluation, Facts, Promotion, SplitCounts, Thresholds

DESCRIPTION_LIMIT = 5000  # characters: the registry's description column is VARCHAR(5000) (PostgreSQL enforces it)
INTENDED_USE = (
    "**Intended use: research and screening support, not a diagnosis.** It flags fundus photographs with signs of "
    "diabetic retinopathy (D), glaucoma (G) or age-related macular degeneration (A) for review by an eye-care "
    "professional; it is never the only basis of a clinical decision."
)
CLASS_NAMES = {"D": "diabetic retinopathy", "G": "glaucoma", "A": "AMD"}
SPLIT_ORDER = ("train", "cv", "val", "offsite_test", "onsite_test")  # cv: out-of-fold scores on train + val
HEADLINE = (("f1_macro", "F1 macro"), ("f1_course", "F1 course"), ("auroc_macro", "AUROC macro"))
PER_CLASS = (
    ("f1", "F1 at threshold"),
    ("auroc", "AUROC"),
    ("ap", "Average precision"),
    ("sensitivity", "Sensitivity at threshold"),
    ("specificity", "Specificity at threshold"),
    ("sens_at_spec90", "Sensitivity at 90% specificity"),
    ("sens_at_spec95", "Sensitivity at 95% specificity"),
    ("spec_at_sens90", "Specificity at 90% sensitivity"),
    ("ece", "Calibration error (ECE)"),
)
# The MLflow UI draws Markdown tables without cell padding, so neighbouring columns run together; an em space ends
# every cell but the last (the zero-width space after it stops the Markdown parser from trimming it away).
CELL_GAP = "\u2003\u200b"
SPEC_FIELDS = ("backbone", "weights", "mode", "loss", "epochs", "lr", "batch_size", "image_size", "augment", "seed")
DETAIL = ("all", "held_out", "none")  # per-class tables of every split, of the held-out splits, of none


def fitted(facts: Facts) -> str:
    """The fullest card within :data:`DESCRIPTION_LIMIT` characters: per-class tables of every split, else of the
    held-out splits only, else none (each left-out table named with where it is kept); cut at a line as a last
    resort."""
    for detail in DETAIL:
        card = render(facts, detail)
        if len(card) <= DESCRIPTION_LIMIT:
            return card
    note = f"\n(cut to the registry's limit of {DESCRIPTION_LIMIT} characters)\n"
    return card[: card.rfind("\n", 0, DESCRIPTION_LIMIT - len(note))] + note


def render(facts: Facts, detail: str = "all") -> str:
    """The card's Markdown with the per-class tables of :data:`DETAIL` ``detail``."""
    facts = dataclasses.replace(facts, evaluations=_ordered(facts.evaluations))
    middle = _training(facts) if facts.kind == "member" else _ensemble(facts)
    lines = [*_header(facts), *_data(facts), *middle, *_results(facts, detail), *_limitations(facts)]
    return "\n".join(lines) + "\n"


def model_summary(facts: Facts) -> str:
    """One paragraph for the registered model's own description: what its versions are."""
    if facts.kind == "ensemble":
        return (
            "odir ensemble: weighted mean of odir member models with test-time augmentation and per-class "
            "thresholds; predicts D (diabetic retinopathy), G (glaucoma), A (AMD) from a fundus photograph. "
            "Research and screening support, not a diagnosis. Each version's description is its model card."
        )
    params = facts.run.params if facts.run else {}
    recipe = ", ".join(f"{k} {params[k]}" for k in ("mode", "loss", "weights") if k in params)
    return (
        f"odir member: {params.get('backbone', 'a CNN')}{f' ({recipe})' if recipe else ''}, multi-label D (diabetic "
        "retinopathy), G (glaucoma), A (AMD) from a fundus photograph. Research and screening support, not a "
        "diagnosis. Each version's description is its model card."
    )


def _ordered(evaluations: list[Evaluation]) -> list[Evaluation]:
    """By split (:data:`SPLIT_ORDER`), and within a split the evaluation with the most TTA views first."""

    def key(e: Evaluation) -> tuple:
        rank = SPLIT_ORDER.index(e.split) if e.split in SPLIT_ORDER else len(SPLIT_ORDER)
        return rank, e.split, -len(e.views)

    return sorted(evaluations, key=key)


# --- formatting -----------------------------------------------------------------------------------------------------


def number(value: float | None, digits: int = 3) -> str:
    """A metric as the card prints it (3 decimals); ``n/a`` for a missing or undefined (NaN) value."""
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def with_interval(metrics: dict[str, float], key: str) -> str | None:
    """``0.812 (0.701–0.889)``: the value and its 95% interval when logged; None when the metric is absent."""
    if key not in metrics:
        return None
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    interval = f" ({number(low)}–{number(high)})" if low is not None and high is not None else ""
    return number(metrics[key]) + interval


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines, each cell but the last ended by :data:`CELL_GAP`."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join([*(f"{cell}{CELL_GAP}" for cell in cells[:-1]), cells[-1]]) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]


def _views(views: tuple[str, ...]) -> str:
    if not views or views == ("identity",):
        return "none"
    return f"{len(views)} views"


def _recorded(value: str | None) -> str:
    return "not recorded" if value is None else value


def _per_class_values(values: dict[str, float], digits: int = 3) -> str:
    return ", ".join(f"{c} {number(values.get(c), digits)}" for c in LABELS)


# --- identity and data ----------------------------------------------------------------------------------------------


def _summary_line(facts: Facts) -> str:
    """The card's first line, plain text (the registry's version list shows it raw): the version, what it is, and
    its held-out F1 macro with split and protocol."""
    if facts.kind == "ensemble":
        what = f"ensemble of {len(facts.members)} member{'s' if len(facts.members) != 1 else ''}"
    else:
        params = facts.run.params if facts.run else {}
        what = f"member model ({params.get('backbone', '?')}, {params.get('loss', '?')} loss)"
    protocol = "patient-grouped CV" if facts.split_mode == "cv" else "given splits"
    scored = [e for e in _one_per_split(facts.evaluations) if "f1_macro" in e.metrics]
    held_out = [e for e in scored if e.split != "val"] or scored
    if not held_out:
        return f"{facts.name} v{facts.version}: not evaluated yet; {what}, {protocol}."
    e = held_out[-1]
    score = with_interval(e.metrics, "f1_macro")
    return (
        f"{facts.name} v{facts.version}: F1 macro {score} on {e.split}; {what}, {protocol}, thresholds {e.thresholds}."
    )


def _header(facts: Facts) -> list[str]:
    what = "ensemble" if facts.kind == "ensemble" else "member model"
    aliases = f", alias {', '.join(f'`@{a}`' for a in facts.aliases)}" if facts.aliases else ""
    lines = [_summary_line(facts), "", INTENDED_USE, "", "## Identity", "", f"- **Kind:** {what}{aliases}"]
    if facts.promotion is not None:
        lines.append(f"- **Promotion:** {_promotion_line(facts.promotion, facts.version)}")
    lines.append(f"- **Protocol:** {_protocol(facts)}")
    lines.append(f"- **Data digest:** `{_recorded(facts.data_digest)}`")
    lines.append(f"- **Profile:** `{_recorded(facts.profile)}`")
    if facts.kind == "member":
        lines.append(f"- **Spec key:** `{_recorded(facts.spec_key)}`")
        lines.append(f"- **Code fingerprint:** `{_recorded(facts.code_fingerprint)}`")
    else:
        lines.append(f"- **Ensemble key:** `{_recorded(facts.ensemble_key)}`")
    if facts.run is not None:
        lines.append(f"- **Run:** `{facts.run.run_id}` ({facts.run.name})")
    return lines


def _promotion_line(promotion: Promotion, version: str) -> str:
    decision, split, champion = promotion.decision, promotion.split, promotion.champion_version
    if champion in ("none", ""):
        return f"{decision} on {split} (no champion before)"
    if champion == version:
        return f"{decision} on {split} (already the champion)"
    line = f"{decision} on {split} against version {champion} ({promotion.metric}"
    if promotion.prob_better is not None:
        line += f"; paired bootstrap over patients: P(better) {promotion.prob_better}"
        line += f", needed {promotion.min_probability}" if promotion.min_probability is not None else ""
    if promotion.difference_ci is not None:
        line += f"; difference {promotion.difference_ci}"
    if promotion.evidence is not None:
        line += f"; {promotion.evidence}"
    return line + ")"


def _protocol(facts: Facts) -> str:
    split_mode, kind = facts.split_mode, facts.kind
    if split_mode == "cv":
        folds = f" ({facts.cv.partition(', views')[0]})" if facts.cv else ""
        fit = "thresholds, temperatures and weights fit on" if kind == "ensemble" else "scored on"
        return (f"patient-grouped k-fold cross-validation on train + val{folds}, both eyes of a patient in one fold; "
                f"{fit} out-of-fold predictions")  # fmt: skip
    if kind == "ensemble":
        return (
            "given splits: members trained on train; weights, temperatures and thresholds fit on val; tested on "
            "offsite_test"
        )
    return "given splits: trained on train, best epoch chosen on val, tested on offsite_test"


def _tuned_on(facts: Facts) -> str:
    return "out-of-fold predictions" if facts.split_mode == "cv" else "val"


def _data(facts: Facts) -> list[str]:
    lines = ["", "## Data", ""]
    report = facts.data_report
    if report is None:
        return [*lines, "- Ingest report: not recorded for this data digest."]
    sizes = ", ".join(f"{s} {c.images} ({c.patients} patients)" for s, c in _split_items(report.splits))
    lines.append(f"- **Images (patients):** {sizes}")
    dataset = facts.run.dataset if facts.run is not None else None
    if dataset is not None:
        lines.append(f"- **Dataset input:** `{dataset.name}` digest `{dataset.digest}` from `{dataset.source}`")
    if report.shared_patients:
        pairs = ", ".join(f"{pair} {count}" for pair, count in report.shared_patients.items())
        lines.append(f"- **Patients in two splits:** {pairs}: scores on the later split are optimistic")
    else:
        lines.append("- **Patients in two splits:** none (checked at ingest)")
    if facts.split_mode == "cv":
        lines[-1] += "; the CV folds keep each patient in one fold"
    return lines


def _split_items(splits: dict[str, SplitCounts]) -> list[tuple[str, SplitCounts]]:
    return sorted(splits.items(), key=lambda kv: SPLIT_ORDER.index(kv[0]) if kv[0] in SPLIT_ORDER else 99)


def _pool(report: DataReport | None) -> SplitCounts | None:
    """train + val, the cross-validation pool (a patient in both counted once); None without both splits."""
    splits = report.splits if report is not None else {}
    if "train" not in splits or "val" not in splits:
        return None
    train, val = splits["train"], splits["val"]
    return SplitCounts(
        images=train.images + val.images,
        patients=train.patients + val.patients - report.shared_patients.get("train/val", 0),
        positives={c: train.positives.get(c, 0) + val.positives.get(c, 0) for c in LABELS},
        no_label=train.no_label + val.no_label,
    )


# --- recipe ---------------------------------------------------------------------------------------------------------


def _training(facts: Facts) -> list[str]:
    if facts.run is None:
        return ["", "## Training", "", "- Training run: not found."]
    params, metrics = facts.run.params, facts.run.metrics
    spec = ", ".join(f"{k} `{params[k]}`" for k in SPEC_FIELDS if k in params)
    lines = ["", "## Training", "", f"- **Spec:** {spec}"]
    if params.get("monitor") == "last":
        folds = "; one model per fold, trained on every other fold, averaged" if facts.split_mode == "cv" else ""
        lines.append(f"- **Epochs:** all {params.get('epochs', '?')}, the last kept: no epoch chosen on data{folds}")
    elif "best_epoch" in metrics and facts.split_mode == "cv":
        lines.append(f"- **Best epoch:** median {int(metrics['best_epoch'])} of {params.get('epochs', '?')} over the "
                     "folds, each fold's chosen on another fold; one model per fold, averaged")  # fmt: skip
    elif "best_epoch" in metrics:
        monitor = params.get("monitor", "f1_macro")
        best = ", ".join(
            f"{label} {number(metrics[f'best_val_{key}'])}" for key, label in HEADLINE if f"best_val_{key}" in metrics
        )
        lines.append(
            f"- **Best epoch:** {int(metrics['best_epoch'])} of {params.get('epochs', '?')}, chosen on val "
            f"`{monitor}`; val at that epoch (threshold 0.5, no TTA; optimistic, val chose it): {best}"
        )
    thresholds = facts.member_thresholds
    if thresholds is not None:
        values = _per_class_values(thresholds.values, 2)
        lines.append(
            f"- **Thresholds tuned on {_tuned_on(facts)}** (grid `{thresholds.grid}`{_objectives(thresholds)}): "
            f"{values}; not part of this version, which predicts at 0.5 (the ensemble tunes its own)"
        )
    return lines


def _objectives(thresholds: Thresholds) -> str:
    objectives = thresholds.objectives
    if not objectives:
        return ", objective F1"
    values = [objectives.get(c, "f1") for c in LABELS]
    if len(set(values)) == 1:
        return f", objective {values[0]}"
    return ", objectives " + ", ".join(f"{c} {o}" for c, o in zip(LABELS, values, strict=True))


def _ensemble(facts: Facts) -> list[str]:
    if facts.run is None:
        return ["", "## Ensemble", "", "- Ensemble run: not found."]
    rows = []
    for member in facts.members:
        temps = member.temperatures
        temperatures = ", ".join(number(temps.get(c), 2) for c in LABELS) if temps else "none"
        rows.append([f"`{member.uri or member.name}`", member.spec.get("backbone", "?"), member.spec.get("loss", "?"),
                     member.spec.get("mode", "?"), number(member.weight), temperatures])  # fmt: skip
    header = ["Member", "Backbone", "Loss", "Mode", "Weight", "Temperature D, G, A"]
    lines = ["", "## Ensemble", "", *table(header, rows)]
    tuned_on = _tuned_on(facts)
    views = facts.run.params.get("tta_views", "")
    lines += ["", f"- **TTA views:** {views.replace(',', ', ') or 'not recorded'}"]
    lines.append(f"- **Weights:** given by the profile, else each member's F1 macro on {tuned_on}, normalised")
    if any(member.temperatures for member in facts.members):
        lines.append(f"- **Calibration:** per member and class temperature, fit on {tuned_on}")
    else:
        lines.append("- **Calibration:** none (no temperatures recorded)")
    thresholds = facts.ensemble_thresholds
    if thresholds is not None:
        lines.append(
            f"- **Thresholds** (tuned on {tuned_on}, grid `{thresholds.grid}`{_objectives(thresholds)}): "
            f"{_per_class_values(thresholds.values, 2)}"
        )
    else:
        lines.append("- **Thresholds:** not recorded")
    return lines


# --- results and limitations ----------------------------------------------------------------------------------------


def _results(facts: Facts, detail: str) -> list[str]:
    lines = ["", "## Results", ""]
    if not facts.evaluations:
        return [*lines, "Not measured: no evaluation of this version was found.", *_recorded_scores(facts, set())]
    lines.append(
        "Protocol: " + ("given splits" if facts.split_mode != "cv" else "patient-grouped CV") + ". "
        "Values with their 95% interval (bootstrap over patients) where logged. F1 macro: mean positive-class F1 "
        "over D, G, A; F1 course: mean of both classes' F1 per disease (the study's scoring)."
    )
    rows = []
    for e in facts.evaluations:
        label = e.split if e.step == "evaluate" else f"{e.split} ({e.step} step)"
        rows.append([label, _split_size(facts.data_report, e), _views(e.views), e.thresholds,
                     *(with_interval(e.metrics, key) or "not measured" for key, _ in HEADLINE)])  # fmt: skip
    lines += ["", *table(["Split", "Images (patients)", "TTA", "Thresholds", *(h for _, h in HEADLINE)], rows)]
    if any(e.split == "val" for e in facts.evaluations) and facts.split_mode != "cv":
        chose = "the best epoch" if facts.kind == "member" else "weights, temperatures and thresholds"
        lines += ["", f"val chose {chose}: its scores are optimistic; offsite_test is the held-out figure."]
    lines += _recorded_scores(facts, {e.split for e in facts.evaluations})
    shown = _one_per_split(facts.evaluations)
    held_out = [e for e in shown if e.split != "val"] or shown
    tabled = {"all": shown, "held_out": held_out, "none": []}[detail]
    for e in tabled:
        lines += _per_class(e)
    left_out = [f"{e.split} in {e.per_class_at}" for e in shown if e not in tabled]
    if left_out:
        lines += [
            "",
            f"Per-class results not shown (the registry keeps {DESCRIPTION_LIMIT} characters): "
            + "; ".join(left_out)
            + ".",
        ]
    return lines


def _split_size(report: DataReport | None, e: Evaluation) -> str:
    counts = _pool(report) if e.split == "cv" else (report.splits.get(e.split) if report is not None else None)
    if counts is None:
        return "?" if e.scored_images is None else str(e.scored_images)
    if e.scored_images is not None and e.scored_images < counts.images:
        return f"{e.scored_images} of {counts.images} (shared patients left out)"
    return f"{counts.images} ({counts.patients})"


def _recorded_scores(facts: Facts, shown: set[str]) -> list[str]:
    """The F1 macro version tags of splits no evaluation above covers (promote scores without TTA)."""
    lines = []
    for score in facts.recorded_scores:
        if score.split in shown:
            continue
        digest = "?" if score.digest is None else score.digest
        data = "this data" if score.digest == facts.data_digest else f"data `{digest[:12]}`"
        lines.append(f"- {score.split}: F1 macro {number(score.f1_macro)} (version tag, no TTA, on {data})")
    return ["", *lines] if lines else []


def _one_per_split(evaluations: list[Evaluation]) -> list[Evaluation]:
    """The evaluation with the most TTA views of each split (the order of :func:`_ordered`)."""
    chosen: dict[str, Evaluation] = {}
    for e in evaluations:
        chosen.setdefault(e.split, e)
    return list(chosen.values())


def _per_class(e: Evaluation) -> list[str]:
    title = f"### {e.split}, per class: TTA {_views(e.views)}, thresholds {e.thresholds}"
    rows, missing = [], []
    for key, label in PER_CLASS:
        cells = [with_interval(e.metrics, f"{key}_{c}") for c in LABELS]
        if all(cell is None for cell in cells):
            missing.append(label)
            continue
        rows.append([label, *(cell or "n/a" for cell in cells)])
    if all(f"support_{c}" in e.metrics for c in LABELS):
        rows.append(["Positives", *(str(int(e.metrics[f"support_{c}"])) for c in LABELS)])
    lines = ["", title, "", *table(["Metric", *(f"{c} ({CLASS_NAMES[c]})" for c in LABELS)], rows)]
    if missing:
        lines += ["", f"Not measured on {e.split}: {', '.join(missing)}."]
    return lines


def _training_counts(facts: Facts) -> tuple[str, SplitCounts | None]:
    """What the model was trained on (train, or in CV train + val) and its counts from the ingest report."""
    pool = _pool(facts.data_report) if facts.split_mode == "cv" else None
    if pool is not None:
        return "train + val", pool
    return "train", facts.data_report.splits.get("train") if facts.data_report is not None else None


def _limitations(facts: Facts) -> list[str]:
    lines = ["", "## Known limitations", ""]
    trained_on, train = _training_counts(facts)
    if train is not None:
        share = ", ".join(f"{c} {train.positives[c] / train.images:.0%} ({train.positives[c]})" for c in LABELS)
        lines.append(
            f"- **Class prevalence** ({trained_on}, {train.images} images): {share}. Precision, F1 and thresholds "
            "hold for this mix only; where a disease is rarer, more positives are false."
        )
        if train.no_label == 0:
            lines.append(
                f"- **No normal images in training:** each of the {train.images} training images shows D, G or A "
                "(none has no label). The model never saw a healthy fundus, and the specificities above are "
                "measured among diseased eyes: on screening data, mostly normal, expect more false positives."
            )
        else:
            lines.append(f"- **Few normal images:** {train.no_label} of {train.images} training images have "
                         "none of D, G, A.")  # fmt: skip
    else:
        lines.append("- **Class prevalence:** not recorded (no ingest report for this data digest).")
    lines.append(
        "- **Camera and site shift:** the scores hold for images like these, from one collection; other cameras, "
        "sites, image quality and populations are untested."
    )
    splits = facts.data_report.splits if facts.data_report is not None else {}
    small = [f"{s} {c.images} images of {c.patients} patients" for s, c in _split_items(splits)
             if s in ("val", "offsite_test")]  # fmt: skip
    if facts.split_mode == "cv" and (pool := _pool(facts.data_report)):
        small.insert(0, f"cv pool {pool.images} images of {pool.patients} patients")
    lines.append(
        "- **Small evaluation sets:** "
        + ("; ".join(small) if small else "sizes not recorded")
        + f". The intervals are wide{_widest(facts)}: differences of a few points between versions are noise."
    )
    return lines


def _widest(facts: Facts) -> str:
    """The F1 macro interval of the held-out split, as an example of how wide the intervals are."""
    for e in reversed(facts.evaluations):
        if "f1_macro_ci_low" in e.metrics and "f1_macro_ci_high" in e.metrics:
            low, high = e.metrics["f1_macro_ci_low"], e.metrics["f1_macro_ci_high"]
            return f" (F1 macro on {e.split}: {number(low)}–{number(high)})"
    return ""
