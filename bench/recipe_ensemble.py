"""The "+ ensemble of recipes" row of issue 15's ablation: several rows' cross-validated members combined by the
pipeline's own ensemble step, scored cross-fitted like every row, with no training.

    ODIR_HOME=.odir/ablation python -m bench.recipe_ensemble abl-3-augment abl-5-lite1

Each named profile must have a finished CV training in the store (``bench/ablation.sh``): its registered member
(the fold models) and its out-of-fold predictions. :func:`steps.ensemble.run` combines them exactly as a pipeline
run with those members would (one temperature per member and class, weights from the members' scores, per-class
thresholds on the fine grid; cross-fitted: each fold's temperatures, weights and thresholds fit on the other
folds), registers the ensemble as a version of ``odir-ensemble`` under the profile name ``a+b``, and the row is
printed in the ablation table's format with a paired comparison against each member row's own cross-fitted
ensemble. What the cross-fitted score does not measure: in CV each image is scored by the one fold model of each
recipe that held it out, so the averaging over fold models of the registered ensemble is not part of it.
"""

from __future__ import annotations

import argparse

from mlflow import MlflowClient

from bench.ablation_table import cross_fitted, finished, interval, paired, per_class
from components.models.tta import STUDY_VIEWS
from steps.ensemble import EnsembleConfig
from steps.ensemble import run as run_ensemble
from steps.support import tracking


def members(client: MlflowClient, experiment_id: str, profiles: list[str]) -> tuple[list[str], list[str], str]:
    """(registered member URIs, their out-of-fold predictions' URIs, the manifest they were trained on)."""
    uris, oof, manifests = [], [], set()
    for profile in profiles:
        train = finished(client, experiment_id, "train", profile)
        if train is None or "oof_predictions_uri" not in train.data.tags:
            raise SystemExit(f"{profile}: no finished cross-validated training in {client.tracking_uri}")
        uris.append(train.data.tags["registered_model_uri"])
        oof.append(train.data.tags["oof_predictions_uri"])
        manifests.add(train.data.params["manifest_uri"])
    if len(manifests) != 1:
        raise SystemExit(f"the profiles were trained on different data: {sorted(manifests)}")
    return uris, oof, manifests.pop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.recipe_ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="+", help="ablation profiles whose CV members are combined")
    parser.add_argument("--grid", default="fine", help="threshold grid (default: fine, as the ablation rows)")
    args = parser.parse_args()
    tracking.setup()
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT).experiment_id
    uris, oof, manifest = members(client, experiment_id, args.profiles)
    name = "+".join(args.profiles)
    config = EnsembleConfig(member_model_uris=tuple(uris), member_val_predictions=tuple(oof), manifest_uri=manifest,
                            views=STUDY_VIEWS, grid=args.grid, profile=name)  # fmt: skip
    result = run_ensemble(config)
    combined = cross_fitted(client, client.get_run(result.run_id))
    fitted = client.get_run(result.run_id).data.metrics
    print(f"{name}: {result.model_uri}, weights {result.weights}")
    print(
        f"| {name} | - | - | - | {interval(fitted, 'f1_macro')} | {interval(fitted, 'f1_course')} "
        f"| {per_class(fitted)} | - | - |"
    )
    for profile in args.profiles:
        alone = cross_fitted(client, finished(client, experiment_id, "ensemble", profile))
        print(f"  vs {profile} alone (paired): {paired(alone, combined)}")


if __name__ == "__main__":
    main()
