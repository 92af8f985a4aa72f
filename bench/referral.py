"""Does referral pick the images the model gets wrong? The referral table of docs/results.md, on the real data and
without leakage: a CV ensemble's cross-fitted out-of-fold predictions, each image scored by the fold model that
never saw its patient.

    python -m bench.referral --store sqlite:////path/to/abl-home/mlruns/mlflow.db --profile abl-3-augment

Per image: the cross-fitted probabilities (each fold's thresholds fit on the other folds and shifted to 0.5: the
ensemble step's ``predictions/cv.csv``), the test-time views' spread of the held-out fold model (its views re-run
here), and, for an ensemble of several members, the members' out-of-fold disagreement (a single member's fold models
cannot disagree honestly: each but one has seen the image, so that column is left out and said so). ``refer`` is
:func:`components.monitoring.referral.refer` with the given limits; an error is any class wrong at the thresholds. Error
rates in and out of the referred group come with 95% intervals over patient resamples, and so does their difference.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

from components import LABELS
from components.data.splits import patient_of
from components.evaluation.bootstrap import patient_codes, percentile_interval, resample_counts
from components.evaluation.ensemble import PROB_COLUMNS
from components.monitoring.referral import ReferralSpec, disagreement, refer, view_spread
from steps.support import tracking


def _ensemble_run(client, profile: str):
    experiment = client.get_experiment_by_name("odir")
    query = f"tags.`odir.step` = 'ensemble' and tags.profile = '{profile}' and attributes.status = 'FINISHED'"
    runs = client.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time DESC"])
    if not runs or "cv_predictions_uri" not in runs[0].data.tags:
        raise SystemExit(f"no finished CV ensemble run of profile {profile!r} in this store")
    return runs[0]


def _name_version(model_uri: str) -> tuple[str, str]:
    name, version = model_uri.removeprefix("models:/").split("/")
    return name, version


def _oof(client, model_uri: str) -> pd.DataFrame:
    """A member's out-of-fold predictions (id, labels, p_*, fold) from its training run."""
    run_id = client.get_model_version(*_name_version(model_uri)).run_id
    frame = pd.read_csv(client.download_artifacts(run_id, "predictions/oof.csv", tracking.scratch()), dtype={"id": str})
    return frame.set_index("id")


def held_out_view_spread(model_uri: str, manifest, oof: pd.DataFrame, views: tuple[str, ...]) -> np.ndarray:
    """``(N, 3)`` view spread of each image under the fold model that held it out, in ``oof``'s order."""
    from components.models.inference import predict_image_views
    from components.training.checkpoints import load_trained
    from steps.support.members import member_checkpoints

    paths = manifest.frame.set_index("id").loc[oof.index, "path"].map(lambda p: str(manifest.local_root / p))
    spread = np.zeros((len(oof), len(LABELS)))
    for k, checkpoint in enumerate(member_checkpoints(model_uri)):
        held_out = (oof["fold"] == k).to_numpy()
        network, spec = load_trained(checkpoint)
        per_view = predict_image_views(network, list(paths[held_out]), spec.image_size, views, spec.batch_size,
                                       preprocess=spec.fundus_preprocess())  # fmt: skip
        spread[held_out] = view_spread(per_view)
        print(f"  fold {k}: {held_out.sum()} images", flush=True)
    return spread


def error_rates(errors: np.ndarray, referred: np.ndarray, patients: list[str], resamples: int = 2000) -> dict:
    """Referred share and error rates in and out, with their difference, each with a 95% patient-bootstrap
    interval."""
    codes, count = patient_codes(patients, len(errors))
    weights = resample_counts(count, resamples, seed=0)[:, codes].astype(np.float64)  # (resamples, N)
    errors, referred = errors.astype(np.float64), referred.astype(np.float64)

    def rate(mask: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights * errors * mask).sum(axis=1) / (weights * mask).sum(axis=1)

    samples = {"referred_share": (weights * referred).sum(axis=1) / weights.sum(axis=1),
               "error_rate_referred": rate(referred), "error_rate_kept": rate(1.0 - referred)}  # fmt: skip
    samples["difference"] = samples["error_rate_referred"] - samples["error_rate_kept"]
    point = {"referred_share": referred.mean(), "error_rate_referred": errors[referred == 1].mean(),
             "error_rate_kept": errors[referred == 0].mean()}  # fmt: skip
    point["difference"] = point["error_rate_referred"] - point["error_rate_kept"]
    return {k: (float(point[k]), *percentile_interval(v)) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="MLflow tracking URI of the store with the CV ensemble")
    parser.add_argument("--profile", required=True, help="the profile whose latest CV ensemble is analysed")
    parser.add_argument("--margins", type=float, nargs="+", default=[0.05, 0.1, 0.15], help="margins to tabulate")
    parser.add_argument("--spreads", type=float, nargs="+", default=[0.1, 0.15, 0.2], help="view-spread limits")
    parser.add_argument("--cache", help="per-image spreads (default outputs/referral-<profile>.npz)")
    args = parser.parse_args()
    os.environ["MLFLOW_TRACKING_URI"] = args.store
    from mlflow import MlflowClient

    from steps.support.manifest import load_manifest

    client = MlflowClient(tracking_uri=args.store)
    run = _ensemble_run(client, args.profile)
    cv = pd.read_csv(
        client.download_artifacts(run.info.run_id, "predictions/cv.csv", tracking.scratch()), dtype={"id": str}
    )
    ensemble = client.get_model_version(*_name_version(run.data.tags["registered_model_uri"]))
    member_uris = ensemble.tags["members"].split(",")
    oofs = [_oof(client, uri).loc[cv["id"]] for uri in member_uris]
    first_member_run = client.get_run(client.get_model_version(*_name_version(member_uris[0])).run_id)
    manifest = load_manifest(first_member_run.data.params["manifest_uri"])
    cache = Path(args.cache or f"outputs/referral-{args.profile}.npz")
    if cache.exists():  # the spreads of this ensemble run, computed before: the table only
        saved = np.load(cache)
        tta_std, member_std = saved["tta_std"], saved["member_std"]
    else:
        views = tuple(run.data.params["tta_views"].split(","))
        print(f"profile {args.profile}: ensemble run {run.info.run_id}, members {member_uris}, {len(cv)} images")
        weights = pd.read_json(
            client.download_artifacts(run.info.run_id, "weights.json", tracking.scratch()), typ="series"
        ).to_numpy()
        spreads = [held_out_view_spread(uri, manifest, oof, views) for uri, oof in zip(member_uris, oofs, strict=True)]
        tta_std = np.tensordot(weights, np.stack(spreads), axes=1)
        member_probs = [oof.loc[:, list(PROB_COLUMNS)].to_numpy() for oof in oofs]
        member_std = disagreement(member_probs, weights) if len(oofs) > 1 else np.zeros_like(tta_std)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, tta_std=tta_std, member_std=member_std, ids=cv["id"].to_numpy())
    probs, labels = cv.loc[:, list(PROB_COLUMNS)].to_numpy(), cv.loc[:, list(LABELS)].to_numpy()
    errors = ((probs >= 0.5) != labels).any(axis=1)
    patients = [patient_of(i) for i in cv["id"]]
    print(f"\nerror rate overall {errors.mean():.3f} ({errors.sum()} of {len(errors)} images with a class wrong)")
    print("\n| margin | max view spread | referred | error rate referred | error rate kept | difference |")
    print("|---|---|---|---|---|---|")
    for margin in args.margins:
        for max_tta in [*args.spreads, 0.5]:  # 0.5: the spread never refers (its largest possible value)
            spec = ReferralSpec(margin=margin, max_tta_std=max_tta)
            referred = refer(probs, (0.5,) * len(LABELS), tta_std, member_std, spec)
            table = error_rates(errors, referred, patients)
            cells = [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in table.values()]
            print(f"| {margin} | {max_tta if max_tta < 0.5 else 'off'} | " + " | ".join(cells) + " |")
    print(f"\nview spread: median {np.median(tta_std.max(axis=1)):.3f}, 90th percentile "
          f"{np.percentile(tta_std.max(axis=1), 90):.3f} (largest class per image)")  # fmt: skip


if __name__ == "__main__":
    main()
