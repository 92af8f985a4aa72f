"""Recipes compared beyond seed noise: each recipe trained with several seeds (one profile per seed, or one
profile with ``seeds:``), its cross-fitted CV ensemble score per seed, the mean and spread over seeds beside the
patient-bootstrap interval, and each recipe against a reference recipe on paired seeds (the same images and
folds; seed k of one against seed k of the other).

    python -m bench.seed_table --store sqlite:////path/to/store/mlruns/mlflow.db \\
        --recipe cpu=abl-19-224px,abl-19-224px-s1,abl-19-224px-s2 \\
        --recipe 160px=abl-18-channels-last,abl-18-channels-last-s1,abl-18-channels-last-s2 [--reference cpu]

A recipe's score in every resample is the mean over its seeds (:func:`components.evaluation.bootstrap.
paired_bootstrap` with repeats), so its interval covers both the patients drawn and the seeds; the paired
difference's interval and P(better) come from the same resamples. Reads the ensemble runs' cross-fitted
predictions (``predictions/cv.csv``: each fold scored by thresholds fit on the others, shifted to 0.5).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from bench.ablation_table import DEFAULT_STORE, cross_fitted, finished
from components import LABELS
from components.data.splits import patient_of
from components.evaluation.bootstrap import paired_bootstrap, pick, report_metrics
from components.evaluation.ensemble import PROB_COLUMNS
from components.evaluation.metrics import DEFAULT_THRESHOLD

METRICS = ("f1_macro", "f1_course")


@dataclass(frozen=True)
class Recipe:
    """One recipe's cross-fitted predictions, a frame per seed, all on the same images in the same order."""

    name: str
    profiles: tuple[str, ...]
    frames: tuple[pd.DataFrame, ...]

    def probs(self) -> list[np.ndarray]:
        return [frame.loc[:, list(PROB_COLUMNS)].to_numpy() for frame in self.frames]


def load_recipe(client: MlflowClient, experiment_id: str, name: str, profiles: list[str]) -> Recipe:
    """The cross-fitted predictions of each profile's finished ensemble run.

    Raises:
        SystemExit: when a profile has no finished ensemble run with cross-fitted predictions.
    """
    frames = []
    for profile in profiles:
        run = finished(client, experiment_id, "ensemble", profile)
        frame = cross_fitted(client, run) if run else None
        if frame is None:
            raise SystemExit(f"{name}: profile {profile} has no finished cross-validated ensemble run in the store")
        frames.append(frame)
    return Recipe(name, tuple(profiles), tuple(frames))


def _score(metric: str):
    return pick(report_metrics((DEFAULT_THRESHOLD,) * len(LABELS)), metric)


def recipe_row(recipe: Recipe, reference: Recipe, labels: np.ndarray, patients: list[str]) -> str:
    """One Markdown row: per metric the per-seed scores, mean ± sd over seeds with the pooled interval, and the paired
    difference against ``reference`` (mean over seed pairs, its interval, P(better))."""
    cells = [recipe.name, str(len(recipe.frames))]
    for metric in METRICS:
        score = _score(metric)
        per_seed = [score(labels, probs) for probs in recipe.probs()]
        pooled = paired_bootstrap(score, labels, recipe.probs(), recipe.probs(), patients, resamples=1000, seed=0)
        low, high = pooled.interval_a
        spread = np.std(per_seed, ddof=1) if len(per_seed) > 1 else float("nan")
        cells.append(" / ".join(f"{s:.3f}" for s in per_seed))
        cells.append(f"**{np.mean(per_seed):.3f}** ± {spread:.3f} [{low:.3f}, {high:.3f}]")
    if recipe is reference:
        cells.append("reference")
    else:
        pairs = min(len(recipe.frames), len(reference.frames))
        compared = paired_bootstrap(_score("f1_macro"), labels, reference.probs()[:pairs], recipe.probs()[:pairs],
                                    patients, resamples=1000, seed=0)  # fmt: skip
        low, high = compared.interval
        cells.append(f"{compared.difference:+.3f} [{low:+.3f}, {high:+.3f}], P(better) {compared.prob_b_better:.2f}"
                     f" ({pairs} seed pairs)")  # fmt: skip
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| recipe | seeds | f1_macro per seed | f1_macro mean ± sd [95% CI] | f1_course per seed "
    "| f1_course mean ± sd [95% CI] | f1_macro vs the reference, paired seeds |\n|---|---|---|---|---|---|---|"
)


def table(store: str, recipes: dict[str, list[str]], reference: str | None = None) -> str:
    """The Markdown table of ``recipes`` (name -> profiles, one per seed, seeds in the same order in every recipe).

    Raises:
        SystemExit: when a recipe's images differ from the reference's.
    """
    client = MlflowClient(tracking_uri=store)
    experiment_id = client.get_experiment_by_name("odir").experiment_id
    loaded = [load_recipe(client, experiment_id, name, profiles) for name, profiles in recipes.items()]
    base = next((r for r in loaded if r.name == reference), loaded[0])
    ids = list(base.frames[0]["id"])
    for recipe in loaded:
        if any(list(frame["id"]) != ids for frame in recipe.frames):
            raise SystemExit(f"{recipe.name}: its predictions cover other images than {base.name}'s")
    labels = base.frames[0].loc[:, list(LABELS)].to_numpy()
    patients = [patient_of(i) for i in ids]
    return "\n".join([HEADER, *(recipe_row(recipe, base, labels, patients) for recipe in loaded)])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.seed_table", description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"tracking URI (default {DEFAULT_STORE})")
    parser.add_argument("--recipe", action="append", required=True, metavar="NAME=PROFILE,PROFILE,...",
                        help="a recipe and its profiles, one per seed (repeat the option per recipe)")  # fmt: skip
    parser.add_argument("--reference", help="the recipe the others are compared with (default: the first)")
    args = parser.parse_args()
    recipes = {}
    for text in args.recipe:
        name, _, profiles = text.partition("=")
        if not profiles:
            parser.error(f"--recipe {text!r}: expected NAME=PROFILE,PROFILE,...")
        recipes[name] = profiles.split(",")
    print(table(args.store, recipes, args.reference))


if __name__ == "__main__":
    main()
