"""Normalisation probe: which input normalisation do the Lite0 ImageNet weights want? A linear probe decides.

The frozen ``efficientnet_lite0`` ImageNet backbone (eval mode, pooled features) sees the train and val images
under each normalisation; a logistic regression per class (standardised features, fixed ``C``,
``class_weight="balanced"``, no tuning) is fit on train and scored on val **without the val images of patients
who also have train images** (left and right eyes of one person are correlated: never score a patient that
helped train). Reported: ``f1_macro`` (mean positive-class F1 over D, G, A at 0.5), per-class AUROC, and 95%
percentile intervals from a bootstrap over patients (all images of a drawn patient, as often as it is drawn) for
``f1_macro``, mean AUROC and each paired difference against ImageNet statistics (the same resampled patients for
every normalisation).

Run on the real data only, by hand (never from tests)::

    .venv/bin/python -m bench.normalisation_probe --data /path/to/odir
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from components import LABELS
from components.data.dataset import FundusDataset
from components.data.splits import load_split, patient_of
from components.models.backbones import IMAGENET, TF_EFFICIENTNET_LITE, Normalisation, build_model

NORMALISATIONS: dict[str, Normalisation] = {
    "imagenet": IMAGENET,
    "tf_lite (registered)": TF_EFFICIENTNET_LITE,
    "0.5 / 0.5 (timm)": Normalisation((0.5,) * 3, (0.5,) * 3, "timm's pretrained_cfg of tf_efficientnet_lite0"),
}
REFERENCE = "imagenet"


@torch.no_grad()
def extract_features(
    features: torch.nn.Module, dataset: FundusDataset, normalisations: Mapping[str, Normalisation], batch_size: int = 32
) -> dict[str, np.ndarray]:
    """Pooled features of every image of ``dataset`` under each normalisation (each image decoded once)."""
    features.eval()
    out: dict[str, list[np.ndarray]] = {name: [] for name in normalisations}
    for images, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = images.float() / 255
        for name, norm in normalisations.items():
            mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
            std = torch.tensor(norm.std).view(1, 3, 1, 1)
            out[name].append(features((x - mean) / std).numpy())
    return {name: np.concatenate(chunks) for name, chunks in out.items()}


def probe_probabilities(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, c: float = 0.1) -> np.ndarray:
    """``(N, 3)`` probabilities of one logistic regression per class fit on standardised train features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    columns = []
    for column in range(train_y.shape[1]):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))
        probe.fit(train_x, train_y[:, column])
        columns.append(probe.predict_proba(test_x)[:, 1])
    return np.stack(columns, axis=1)


def unseen_patients(train_ids: Sequence[str], test_ids: Sequence[str]) -> np.ndarray:
    """Boolean mask of the test images whose patient has no train image."""
    seen = {patient_of(image_id) for image_id in train_ids}
    return np.array([patient_of(image_id) not in seen for image_id in test_ids], dtype=bool)


def weighted_f1(y: np.ndarray, probs: np.ndarray, weights: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Positive-class F1 per class, ``(R, 3)``, for ``R`` rows of per-image weights ``(R, N)`` (counts = copies)."""
    pred = probs >= threshold
    tp = weights @ (pred & (y == 1)).astype(np.float64)
    fp = weights @ (pred & (y == 0)).astype(np.float64)
    fn = weights @ (~pred & (y == 1)).astype(np.float64)
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def weighted_auroc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC per class, ``(R, 3)``: the weighted Mann-Whitney statistic (ties count 1/2); NaN without both labels."""
    result = np.full((weights.shape[0], y.shape[1]), np.nan)
    for column in range(y.shape[1]):
        positive, negative = y[:, column] == 1, y[:, column] == 0
        s_pos, s_neg = scores[positive, column], scores[negative, column]
        wins = (s_pos[:, None] > s_neg[None, :]) + 0.5 * (s_pos[:, None] == s_neg[None, :])
        w_pos, w_neg = weights[:, positive], weights[:, negative]
        pairs = w_pos.sum(axis=1) * w_neg.sum(axis=1)
        numerator = np.einsum("rp,pn,rn->r", w_pos, wins, w_neg)
        result[:, column] = np.divide(numerator, pairs, out=np.full_like(pairs, np.nan), where=pairs > 0)
    return result


def patient_bootstrap_weights(patients: Sequence[str], resamples: int, seed: int) -> np.ndarray:
    """``(resamples, N)`` image weights: how often each image's patient was drawn (patients drawn with replacement)."""
    names, index = np.unique(np.asarray(patients), return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(resamples, len(names)))
    counts = np.zeros((resamples, len(names)))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1)
    return counts[:, index]


def _interval(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.nanpercentile(values, [2.5, 97.5])]


def score(
    y: np.ndarray, probs: Mapping[str, np.ndarray], patients: Sequence[str], resamples: int = 1000, seed: int = 0,
    reference: str = REFERENCE,
) -> dict[str, dict]:  # fmt: skip
    """Point estimates and patient-bootstrap intervals of each variant, and paired differences to ``reference``."""
    ones = np.ones((1, len(y)))
    weights = patient_bootstrap_weights(patients, resamples, seed)
    boot: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    result: dict[str, dict] = {}
    for name, p in probs.items():
        f1, auroc = weighted_f1(y, p, ones)[0], weighted_auroc(y, p, ones)[0]
        boot_f1, boot_auroc = weighted_f1(y, p, weights).mean(axis=1), weighted_auroc(y, p, weights).mean(axis=1)
        boot[name] = (boot_f1, boot_auroc)
        result[name] = {
            **{f"f1_{label}": float(f1[c]) for c, label in enumerate(LABELS)},
            **{f"auroc_{label}": float(auroc[c]) for c, label in enumerate(LABELS)},
            "f1_macro": float(f1.mean()),
            "f1_macro_ci": _interval(boot_f1),
            "auroc_mean": float(auroc.mean()),
            "auroc_mean_ci": _interval(boot_auroc),
            "undefined_auroc_resamples": int(np.isnan(boot_auroc).sum()),
        }
    for name in probs:
        if name == reference:
            continue
        result[name]["minus_" + reference] = {
            "f1_macro": result[name]["f1_macro"] - result[reference]["f1_macro"],
            "f1_macro_ci": _interval(boot[name][0] - boot[reference][0]),
            "auroc_mean": result[name]["auroc_mean"] - result[reference]["auroc_mean"],
            "auroc_mean_ci": _interval(boot[name][1] - boot[reference][1]),
        }
    return result


def run(
    root: Path, size: int = 224, c: float = 0.1, resamples: int = 1000, seed: int = 0, batch_size: int = 32,
    normalisations: Mapping[str, Normalisation] = NORMALISATIONS, backbone: str = "efficientnet_lite0",
    weights: str = "imagenet",
) -> dict:  # fmt: skip
    """The probe on ``root``'s train and val splits; a JSON-ready summary."""
    started = time.perf_counter()
    train, val = load_split(root, "train", check_images=False), load_split(root, "val", check_images=False)
    features = build_model(backbone, weights).features  # the bare backbone: normalised here, per variant
    train_x = extract_features(features, FundusDataset.from_split(train, size, cache=None), normalisations, batch_size)
    val_x = extract_features(features, FundusDataset.from_split(val, size, cache=None), normalisations, batch_size)
    keep = unseen_patients(train.ids, val.ids)
    ids = [image_id for image_id, kept in zip(val.ids, keep, strict=True) if kept]
    y = val.labels[keep].astype(np.int64)
    probs = {name: probe_probabilities(train_x[name], train.labels, val_x[name][keep], c) for name in normalisations}
    return {
        "backbone": f"{backbone} ({weights}), eval mode, pooled features",
        "image_size": size,
        "probe": f"StandardScaler + LogisticRegression(C={c}, class_weight='balanced') per class",
        "train_images": len(train),
        "scored_images": len(ids),
        "scored_patients": len({patient_of(i) for i in ids}),
        "excluded_images": int((~keep).sum()),
        "positives": {label: int(y[:, column].sum()) for column, label in enumerate(LABELS)},
        "resamples": resamples,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
        "results": score(y, probs, [patient_of(i) for i in ids], resamples, seed),
    }


def markdown(summary: dict) -> str:
    """The results as a markdown table (intervals in brackets), differences against the reference below it."""
    rows = ["| normalisation | f1_macro [95% CI] | F1 D / G / A | AUROC D / G / A | mean AUROC [95% CI] |"]
    rows.append("|---|---|---|---|---|")
    for name, r in summary["results"].items():
        f1s = " / ".join(f"{r[f'f1_{label}']:.3f}" for label in LABELS)
        aurocs = " / ".join(f"{r[f'auroc_{label}']:.3f}" for label in LABELS)
        f1_ci, auroc_ci = r["f1_macro_ci"], r["auroc_mean_ci"]
        rows.append(
            f"| {name} | {r['f1_macro']:.3f} [{f1_ci[0]:.3f}, {f1_ci[1]:.3f}] | {f1s} | {aurocs} "
            f"| {r['auroc_mean']:.3f} [{auroc_ci[0]:.3f}, {auroc_ci[1]:.3f}] |"
        )
    rows += ["", f"| paired difference (minus {REFERENCE}) | Δ f1_macro [95% CI] | Δ mean AUROC [95% CI] |"]
    rows.append("|---|---|---|")
    for name, r in summary["results"].items():
        d = r.get("minus_" + REFERENCE)
        if d:
            rows.append(
                f"| {name} | {d['f1_macro']:+.3f} [{d['f1_macro_ci'][0]:+.3f}, {d['f1_macro_ci'][1]:+.3f}] "
                f"| {d['auroc_mean']:+.3f} [{d['auroc_mean_ci'][0]:+.3f}, {d['auroc_mean_ci'][1]:+.3f}] |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset root with train and val splits")
    parser.add_argument("--size", type=int, default=224, help="image side (Lite0 was trained at 224)")
    parser.add_argument("--C", dest="c", type=float, default=0.1, help="inverse L2 strength, fixed (not tuned)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    summary = run(args.data, args.size, args.c, args.resamples, args.seed)
    summary["date"] = time.strftime("%Y-%m-%d")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    print(markdown(summary))


if __name__ == "__main__":
    main()
