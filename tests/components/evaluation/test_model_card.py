"""Model cards rendered from hand-built facts, no store: the lines a reader relies on, exactly."""

from __future__ import annotations

import dataclasses

from components import LABELS
from components.evaluation.model_card import (
    CELL_GAP,
    DESCRIPTION_LIMIT,
    DETAIL,
    INTENDED_USE,
    PER_CLASS,
    fitted,
    model_summary,
    number,
    render,
    table,
)
from components.evaluation.model_card_facts import (
    DataReport,
    DatasetInput,
    Evaluation,
    Facts,
    Member,
    ProducingRun,
    Promotion,
    RecordedScore,
    SplitCounts,
    Thresholds,
)

TTA = ("identity", "hflip", "vflip", "rot90", "rot270")
REPORT = DataReport(
    {  # not in the card's order: the card sorts the splits
        "offsite_test": SplitCounts(30, 15, {"D": 14, "G": 6, "A": 5}),
        "train": SplitCounts(100, 60, {"D": 50, "G": 20, "A": 15}),
        "val": SplitCounts(20, 12, {"D": 10, "G": 4, "A": 3}),
    }
)
OFFSITE = Evaluation(
    "offsite_test", TTA, "0.5",
    {"f1_macro": 0.612, "f1_macro_ci_low": 0.5, "f1_macro_ci_high": 0.7, "f1_course": 0.65, "f1_course_ci_low": 0.55,
     "f1_course_ci_high": 0.74, "auroc_macro": 0.81, "f1_D": 0.7, "f1_D_ci_low": 0.6, "f1_D_ci_high": 0.8, "f1_G": 0.5,
     "auroc_D": 0.9, "auroc_G": 0.8, "auroc_A": 0.85, "support_D": 14.0, "support_G": 6.0, "support_A": 5.0},
    "evaluate", "`tables/offsite_test_per_class.csv` of evaluate run `r2`",
)  # fmt: skip
VAL = Evaluation("val", ("identity",), "0.5", {"f1_macro": 0.7}, "evaluate", "`tables/val_per_class.csv` of run `r1`")
SPEC = {"backbone": "resnet18", "weights": "imagenet", "mode": "full", "loss": "bce", "epochs": "6", "lr": "0.001",
        "batch_size": "8", "image_size": "224", "seed": "1", "monitor": "f1_macro", "num_workers": "2"}  # fmt: skip
BEST = {"best_epoch": 4.0, "best_val_f1_macro": 0.61, "best_val_auroc_macro": 0.8}
TRAIN_RUN = ProducingRun("run-1", "train card-a", SPEC, BEST, DatasetInput("odir", "d1g35t", "/path/to/odir"))
MEMBER = Facts(
    "odir-card-a", "3", "member", "given", data_digest="abc", profile="cpu-fast", spec_key="k1",
    code_fingerprint="f1", run=TRAIN_RUN, data_report=REPORT, evaluations=[OFFSITE, VAL],
    member_thresholds=Thresholds({"D": 0.35, "G": 0.2, "A": 0.45}, "study"),
)  # fmt: skip


def _lines(card: str) -> list[str]:
    """The card's lines with the table cells' padding taken out, so rows read as plain Markdown."""
    return card.replace(CELL_GAP, "").splitlines()


def _line(card: str, start: str) -> str:
    return next(line for line in _lines(card) if line.startswith(start))


def _section(card: str, title: str) -> list[str]:
    """The lines of one ``##``/``###`` section, up to the next heading."""
    lines = _lines(card)
    start = lines.index(title) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#")), len(lines))
    return lines[start:end]


def test_a_member_card_names_its_version_protocol_recipe_and_held_out_score() -> None:
    card = render(MEMBER)
    lines = _lines(card)
    assert lines[0] == (
        "odir-card-a v3: F1 macro 0.612 (0.500–0.700) on offsite_test; member model (resnet18, bce loss), given "
        "splits, thresholds 0.5."
    )
    assert lines[2] == INTENDED_USE and "research and screening support, not a diagnosis" in INTENDED_USE
    assert [line for line in _section(card, "## Identity") if line] == [
        "- **Kind:** member model",
        "- **Protocol:** given splits: trained on train, best epoch chosen on val, tested on offsite_test",
        "- **Data digest:** `abc`",
        "- **Profile:** `cpu-fast`",
        "- **Spec key:** `k1`",
        "- **Code fingerprint:** `f1`",
        "- **Run:** `run-1` (train card-a)",
    ]
    assert [line for line in _section(card, "## Data") if line] == [
        "- **Images (patients):** train 100 (60 patients), val 20 (12 patients), offsite_test 30 (15 patients)",
        "- **Dataset input:** `odir` digest `d1g35t` from `/path/to/odir`",
        "- **Patients in two splits:** none (checked at ingest)",
    ]
    assert [line for line in _section(card, "## Training") if line] == [
        "- **Spec:** backbone `resnet18`, weights `imagenet`, mode `full`, loss `bce`, epochs `6`, lr `0.001`, "
        "batch_size `8`, image_size `224`, seed `1`",
        "- **Best epoch:** 4 of 6, chosen on val `f1_macro`; val at that epoch (threshold 0.5, no TTA; optimistic, val "
        "chose it): F1 macro 0.610, AUROC macro 0.800",
        "- **Thresholds tuned on val** (grid `study`, objective F1): D 0.35, G 0.20, A 0.45; not part of this "
        "version, which predicts at 0.5 (the ensemble tunes its own)",
    ]


def test_the_results_table_gives_each_split_its_scores_with_intervals_and_names_the_protocol() -> None:
    card = render(dataclasses.replace(MEMBER, evaluations=[VAL, OFFSITE]))
    assert render(MEMBER) == card  # the card orders the evaluations itself
    results = _section(card, "## Results")
    assert results[1].startswith("Protocol: given splits. Values with their 95% interval (bootstrap over patients)")
    assert results[3:7] == [
        "| Split | Images (patients) | TTA | Thresholds | F1 macro | F1 course | AUROC macro |",
        "|---|---|---|---|---|---|---|",
        "| val | 20 (12) | none | 0.5 | 0.700 | not measured | not measured |",
        "| offsite_test | 30 (15) | 5 views | 0.5 | 0.612 (0.500–0.700) | 0.650 (0.550–0.740) | 0.810 |",
    ]
    assert "val chose the best epoch: its scores are optimistic; offsite_test is the held-out figure." in results
    scored_fewer = dataclasses.replace(OFFSITE, scored_images=24)
    row = _line(render(dataclasses.replace(MEMBER, evaluations=[scored_fewer])), "| offsite_test |")
    assert row.startswith("| offsite_test | 24 of 30 (shared patients left out) | 5 views |")


def test_a_per_class_table_quotes_each_metric_with_its_interval_and_names_the_unmeasured() -> None:
    section = _section(render(MEMBER), "### offsite_test, per class: TTA 5 views, thresholds 0.5")
    assert [line for line in section if line] == [
        "| Metric | D (diabetic retinopathy) | G (glaucoma) | A (AMD) |",
        "|---|---|---|---|",
        "| F1 at threshold | 0.700 (0.600–0.800) | 0.500 | n/a |",
        "| AUROC | 0.900 | 0.800 | 0.850 |",
        "| Positives | 14 | 6 | 5 |",
        "Not measured on offsite_test: Average precision, Sensitivity at threshold, Specificity at threshold, "
        "Sensitivity at 90% specificity, Sensitivity at 95% specificity, Specificity at 90% sensitivity, "
        "Calibration error (ECE).",
    ]


def test_the_limitations_give_prevalence_normal_images_shift_and_interval_width() -> None:
    limitations = [line for line in _section(render(MEMBER), "## Known limitations") if line]
    assert limitations[0] == (
        "- **Class prevalence** (train, 100 images): D 50% (50), G 20% (20), A 15% (15). Precision, F1 and "
        "thresholds hold for this mix only; where a disease is rarer, more positives are false."
    )
    assert limitations[1].startswith("- **No normal images in training:** each of the 100 training images shows D")
    assert limitations[2].startswith("- **Camera and site shift:**")
    assert limitations[3] == (
        "- **Small evaluation sets:** val 20 images of 12 patients; offsite_test 30 images of 15 patients. The "
        "intervals are wide (F1 macro on offsite_test: 0.500–0.700): differences of a few points between versions "
        "are noise."
    )
    train = dataclasses.replace(REPORT.splits["train"], no_label=7)
    some_normal = dataclasses.replace(MEMBER, data_report=DataReport({**REPORT.splits, "train": train}))
    assert "- **Few normal images:** 7 of 100 training images have none of D, G, A." in _lines(render(some_normal))


def test_a_cross_validated_member_card_names_the_folds_the_pool_and_its_out_of_fold_scores() -> None:
    cv = Evaluation("cv", ("identity", "hflip"), "0.5", {"f1_macro": 0.55, "f1_macro_ci_low": 0.45,
                    "f1_macro_ci_high": 0.65}, "train", "the `cv_*` metrics of train run `run-1`")  # fmt: skip
    facts = dataclasses.replace(
        MEMBER, split_mode="cv", cv="3 folds, seed 0, views identity,hflip", evaluations=[cv],
        data_report=dataclasses.replace(REPORT, shared_patients={"train/val": 2}),
    )  # fmt: skip
    card = render(facts)
    assert _lines(card)[0] == (
        "odir-card-a v3: F1 macro 0.550 (0.450–0.650) on cv; member model (resnet18, bce loss), patient-grouped CV, "
        "thresholds 0.5."
    )
    assert _line(card, "- **Protocol:**") == (
        "- **Protocol:** patient-grouped k-fold cross-validation on train + val (3 folds, seed 0), both eyes of a "
        "patient in one fold; scored on out-of-fold predictions"
    )
    assert _line(card, "- **Patients in two splits:**") == (
        "- **Patients in two splits:** train/val 2: scores on the later split are optimistic; the CV folds keep each "
        "patient in one fold"
    )
    assert _line(card, "- **Best epoch:**") == (
        "- **Best epoch:** median 4 of 6 over the folds, each fold's chosen on another fold; one model per fold, "
        "averaged"
    )
    assert _line(card, "- **Thresholds tuned on out-of-fold predictions** (grid `study`, objective F1): D 0.35")
    assert "Protocol: patient-grouped CV. " in card
    # the pool is train + val, its patients counted once: 60 + 12 - 2 shared
    assert _line(card, "| cv (train step) |") == (
        "| cv (train step) | 120 (70) | 2 views | 0.5 | 0.550 (0.450–0.650) | not measured | not measured |"
    )
    assert _line(card, "- **Class prevalence**").startswith(
        "- **Class prevalence** (train + val, 120 images): D 50% (60), G 20% (24), A 15% (18)."
    )
    assert _line(card, "- **Small evaluation sets:**").startswith(
        "- **Small evaluation sets:** cv pool 120 images of 70 patients; val 20 images of 12 patients; offsite_test "
        "30 images of 15 patients. The intervals are wide (F1 macro on cv: 0.450–0.650)"
    )
    assert "val chose" not in card


def _ensemble(**changes) -> Facts:
    run = ProducingRun("run-9", "ensemble", {"tta_views": "identity,hflip", "grid": "study"}, {})
    members = [
        Member("card-a", "models:/odir-card-a/3", 0.6, {"backbone": "resnet18", "loss": "bce", "mode": "full"},
               {"D": 1.2, "G": 0.9, "A": 1.05}),
        Member("card-b", None, 0.4, {"backbone": "tiny_cnn", "loss": "focal", "mode": "head"}),
    ]  # fmt: skip
    offsite = dataclasses.replace(OFFSITE, views=("identity", "hflip"), thresholds="tuned on val")
    val = Evaluation("val", ("identity", "hflip"), "tuned on val (these images)", {"f1_macro": 0.75}, "ensemble",
                     "the `val_*` metrics of ensemble run `run-9`")  # fmt: skip
    objectives = {"D": "f1", "G": "sens_at_spec:0.9", "A": "f1"}
    facts = Facts(
        "odir-ensemble", "2", "ensemble", "given", aliases=("champion",), data_digest="abc", ensemble_key="e1",
        run=run, data_report=REPORT, evaluations=[offsite, val], members=members,
        ensemble_thresholds=Thresholds({"D": 0.4, "G": 0.25, "A": 0.5}, "study", objectives),
        promotion=Promotion("champion", "offsite_test", champion_version="none"),
    )  # fmt: skip
    return dataclasses.replace(facts, **changes)


def test_an_ensemble_card_names_members_weights_views_calibration_and_thresholds() -> None:
    card = render(_ensemble())
    assert _lines(card)[0] == (
        "odir-ensemble v2: F1 macro 0.612 (0.500–0.700) on offsite_test; ensemble of 2 members, given splits, "
        "thresholds tuned on val."
    )
    identity = [line for line in _section(card, "## Identity") if line]
    assert identity[:3] == [
        "- **Kind:** ensemble, alias `@champion`",
        "- **Promotion:** champion on offsite_test (no champion before)",
        "- **Protocol:** given splits: members trained on train; weights, temperatures and thresholds fit on val; "
        "tested on offsite_test",
    ]
    assert "- **Ensemble key:** `e1`" in identity and "- **Profile:** `not recorded`" in identity
    assert [line for line in _section(card, "## Ensemble") if line] == [
        "| Member | Backbone | Loss | Mode | Weight | Temperature D, G, A |",
        "|---|---|---|---|---|---|",
        "| `models:/odir-card-a/3` | resnet18 | bce | full | 0.600 | 1.20, 0.90, 1.05 |",
        "| `card-b` | tiny_cnn | focal | head | 0.400 | none |",
        "- **TTA views:** identity, hflip",
        "- **Weights:** given by the profile, else each member's F1 macro on val, normalised",
        "- **Calibration:** per member and class temperature, fit on val",
        "- **Thresholds** (tuned on val, grid `study`, objectives D f1, G sens_at_spec:0.9, A f1): D 0.40, G 0.25, "
        "A 0.50",
    ]
    assert _line(card, "| val (ensemble step) |") == (
        "| val (ensemble step) | 20 (12) | 2 views | tuned on val (these images) | 0.750 | not measured | "
        "not measured |"
    )
    chose = "val chose weights, temperatures and thresholds: its scores are optimistic; offsite_test is the held-out"
    assert f"{chose} figure." in _lines(card)


def test_a_cross_fitted_ensemble_card_says_what_was_fit_on_out_of_fold_predictions() -> None:
    card = render(_ensemble(split_mode="cv", cv="3 folds, seed 0, views identity", members=[], evaluations=[]))
    assert _line(card, "- **Protocol:**") == (
        "- **Protocol:** patient-grouped k-fold cross-validation on train + val (3 folds, seed 0), both eyes of a "
        "patient in one fold; thresholds, temperatures and weights fit on out-of-fold predictions"
    )
    assert _lines(card)[0] == "odir-ensemble v2: not evaluated yet; ensemble of 0 members, patient-grouped CV."
    assert _line(card, "- **Calibration:**") == "- **Calibration:** none (no temperatures recorded)"
    assert _line(card, "- **Thresholds** (tuned on out-of-fold predictions, grid `study`, objectives D f1, G sens")
    unrecorded = render(_ensemble(ensemble_thresholds=None, run=dataclasses.replace(_ensemble().run, params={})))
    assert "- **Thresholds:** not recorded" in _lines(unrecorded)
    assert "- **TTA views:** not recorded" in _lines(unrecorded)
    assert "- Ensemble run: not found." in _lines(render(_ensemble(run=None)))


def test_the_promotion_line_names_split_metric_and_evidence() -> None:
    def promotion_line(promotion: Promotion, version: str = "2") -> str:
        return _line(render(_ensemble(promotion=promotion, version=version)), "- **Promotion:** ")

    compared = Promotion("challenger", "offsite_test", "f1_macro", "1", prob_better="0.612", min_probability="0.9",
                         difference_ci="[-0.020, +0.050]")  # fmt: skip
    assert promotion_line(compared) == (
        "- **Promotion:** challenger on offsite_test against version 1 (f1_macro; paired bootstrap over patients: "
        "P(better) 0.612, needed 0.9; difference [-0.020, +0.050])"
    )
    assert promotion_line(compared, "1") == "- **Promotion:** challenger on offsite_test (already the champion)"
    unfair = Promotion("challenger", "cv", champion_version="1", evidence="no comparison: why")
    expected = "- **Promotion:** challenger on cv against version 1 (f1_macro; no comparison: why)"
    assert promotion_line(unfair) == expected
    assert "Promotion" not in render(_ensemble(promotion=None))


def test_scores_recorded_as_version_tags_show_where_no_evaluation_covers_their_split() -> None:
    scores = [RecordedScore("offsite_test", 0.6, "abc"), RecordedScore("onsite_test", 0.3, "0123456789abcdef"),
              RecordedScore("val", 0.65, "abc")]  # fmt: skip
    results = _section(render(dataclasses.replace(MEMBER, recorded_scores=scores, evaluations=[OFFSITE])), "## Results")
    assert "- offsite_test: F1 macro" not in "\n".join(results)  # its evaluation is in the table
    assert "- onsite_test: F1 macro 0.300 (version tag, no TTA, on data `0123456789ab`)" in results
    assert "- val: F1 macro 0.650 (version tag, no TTA, on this data)" in results


def test_missing_metrics_read_not_measured() -> None:
    bare = Facts("odir-x", "1", "member", "given", evaluations=[OFFSITE])
    card = render(bare)
    assert _line(card, "| offsite_test |") == (
        "| offsite_test | ? | 5 views | 0.5 | 0.612 (0.500–0.700) | 0.650 (0.550–0.740) | 0.810 |"
    )
    partial = dataclasses.replace(OFFSITE, metrics={"f1_macro": float("nan")})
    assert _line(render(dataclasses.replace(bare, evaluations=[partial])), "| offsite_test |").endswith(
        "| n/a | not measured | not measured |"
    )
    assert [line for line in _section(card, "## Identity") if "not recorded" in line] == [
        "- **Data digest:** `not recorded`", "- **Profile:** `not recorded`", "- **Spec key:** `not recorded`",
        "- **Code fingerprint:** `not recorded`",
    ]  # fmt: skip
    assert "- Ingest report: not recorded for this data digest." in _lines(card)
    assert "- Training run: not found." in _lines(card)
    assert "- **Class prevalence:** not recorded (no ingest report for this data digest)." in _lines(card)
    assert _line(card, "- **Small evaluation sets:**").startswith("- **Small evaluation sets:** sizes not recorded.")
    nothing = render(dataclasses.replace(bare, evaluations=[]))
    assert _lines(nothing)[0] == "odir-x v1: not evaluated yet; member model (?, ? loss), given splits."
    assert "Not measured: no evaluation of this version was found." in _lines(nothing)


def test_a_member_that_picked_no_epoch_says_so() -> None:
    run = dataclasses.replace(TRAIN_RUN, params={"epochs": "6", "monitor": "last"}, metrics={"best_epoch": 6.0})
    given = render(dataclasses.replace(MEMBER, run=run))
    assert "- **Epochs:** all 6, the last kept: no epoch chosen on data" in _lines(given) and "Best epoch" not in given
    folds = render(dataclasses.replace(MEMBER, run=run, split_mode="cv"))
    per_fold = "one model per fold, trained on every other fold, averaged"
    assert f"- **Epochs:** all 6, the last kept: no epoch chosen on data; {per_fold}" in _lines(folds)


def test_a_card_too_long_for_the_registry_leaves_out_per_class_tables_and_says_where_they_are() -> None:
    def evaluation(split: str, run_id: str) -> Evaluation:
        metrics = {f"{m}_{c}": 0.5 for m, _ in PER_CLASS for c in LABELS}
        return Evaluation(split, ("identity",), "0.5", metrics, "evaluate",
                          f"`tables/{split}_per_class.csv` of evaluate run `{run_id}`")  # fmt: skip

    facts = Facts("odir-x", "1", "member", "given", profile="p",
                  evaluations=[evaluation("val", "r1"), evaluation("offsite_test", "r2")])  # fmt: skip
    sizes = {detail: len(render(facts, detail)) for detail in DETAIL}
    assert fitted(facts) == render(facts, "all")

    def padded(target: int) -> Facts:  # a profile name that brings the full card to ``target`` characters
        return dataclasses.replace(facts, profile="x" * (target - sizes["all"] + 1))

    card = fitted(padded(DESCRIPTION_LIMIT + 1))
    assert len(card) <= DESCRIPTION_LIMIT and "### val, per class" not in card and "### offsite_test, per class" in card
    assert (
        "not shown (the registry keeps 5000 characters): val in `tables/val_per_class.csv` of evaluate run `r1`."
        in card
    )
    card = fitted(padded(DESCRIPTION_LIMIT + sizes["all"] - sizes["held_out"] + 1))
    assert len(card) <= DESCRIPTION_LIMIT and "per class" not in card
    assert "`tables/offsite_test_per_class.csv` of evaluate run `r2`." in card
    card = fitted(padded(2 * DESCRIPTION_LIMIT))
    assert len(card) <= DESCRIPTION_LIMIT and card.endswith("(cut to the registry's limit of 5000 characters)\n")


def test_the_registered_model_summary_says_what_its_versions_are() -> None:
    assert model_summary(MEMBER).startswith(
        "odir member: resnet18 (mode full, loss bce, weights imagenet), multi-label D (diabetic retinopathy)"
    )
    assert model_summary(dataclasses.replace(MEMBER, run=None)).startswith("odir member: a CNN, multi-label")
    assert model_summary(_ensemble()).startswith("odir ensemble: weighted mean of odir member models")
    assert all("not a diagnosis" in model_summary(f) for f in (MEMBER, _ensemble()))


def test_tables_pad_every_cell_but_the_last_and_numbers_read_na_when_undefined() -> None:
    assert table(["a", "b"], [["1", "2"]]) == [f"| a{CELL_GAP} | b |", "|---|---|", f"| 1{CELL_GAP} | 2 |"]
    assert (number(0.12345), number(0.12345, 2), number(None), number(float("nan"))) == ("0.123", "0.12", "n/a", "n/a")
