"""The commands of ``odir`` that use registered models: ``predict``, ``explain``, ``check-drift``, ``verify`` and
``compare``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from components import LABELS
from components.errors import OdirError
from components.outputs import check_output
from flows.failures import EXIT_FAILED
from steps.support import registry, tracking

if TYPE_CHECKING:
    from components.monitoring.drift import DriftReport


def _cmd_predict(args: argparse.Namespace) -> int:
    from steps.support.manifest import image_files
    from steps.support.predict import predict_paths

    images = image_files(args.images)
    check_output(args.out)
    tracking.setup()
    registry.registered_version(args.model)  # a wrong URI or a model that is not there: one line, before the work
    if args.check_drift:
        from steps.support.drift_reference import load_drift_reference

        load_drift_reference(args.model)  # a version without one: one line before the work, not after it
    prediction = predict_paths(args.model, [str(p) for p in images], backend=args.backend)
    frame = prediction.frame.round(6)
    frame.insert(0, "id", [p.name for p in images])
    report = None
    if args.check_drift:
        report = _check_drift(images, args.model, args.backend)
        frame = frame.assign(ood=[int(c.out_of_distribution) for c in report.images],
                             ood_reasons=["; ".join(c.reasons) for c in report.images])  # fmt: skip
    frame.to_csv(args.out, index=False)
    referred = int(frame["refer"].sum())
    print(f"{len(frame)} predictions from {args.model} written to {Path(args.out).resolve()}")
    print(f"{referred} of {len(frame)} referred to a grader (refer = 1: near a threshold, or views or members "
          "disagree)")  # fmt: skip
    if report is None:
        _warn_if_unlike(images, args.model, args.images)
        return 0
    line, failed = _verdict(report, fail_on_ood=None)
    print(line)
    return EXIT_FAILED if failed else 0


def _check_drift(images: list[Path], model_uri: str, backend: str | None) -> DriftReport:
    """``odir predict --check-drift``: the images against the model's drift reference, the report printed and
    logged (as ``odir check-drift``)."""
    from steps.drift import check_images, format_report

    report = check_images(images, model_uri, backend=backend)
    print(format_report(report))
    return report


def _warn_if_unlike(images: list[Path], model_uri: str, folder: str) -> None:
    """One line on stderr when the model's drift reference says images are unlike its training data (from their
    statistics: black frame, tiny, not a fundus, turned), whose predictions then mean little; nothing for a version
    without a reference."""
    from steps.drift import screen
    from steps.support.drift_reference import NoDriftReference

    try:
        flagged = [check for check in screen(images, model_uri) if check.out_of_distribution]
    except NoDriftReference:
        return
    if flagged:
        first = flagged[0]
        print(f"odir predict: warning: {len(flagged)} of {len(images)} image(s) are unlike the training data of "
              f"{model_uri} (e.g. {Path(first.image).name}: {first.reasons[0]}), so its predictions on them mean "
              f"little; `odir check-drift --images {folder} --model {model_uri}` lists them",
              file=sys.stderr)  # fmt: skip


def _backend_argument(command: argparse.ArgumentParser) -> None:
    from components.models import BACKENDS

    command.add_argument("--backend", choices=BACKENDS,
                         help="what runs the ensemble's networks: onnxruntime (the default, where the version has "
                         "ONNX exports; older versions run eager) or torch (eager PyTorch, the reference)")  # fmt: skip


def add_predict(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
        "predict", help="label new images with a registered model (the champion by default)",
        description="Labels a folder of images with a registered model (the ensemble's thresholds and referral rule) "
        "and writes one row per image. Images whose statistics the model's drift reference calls unlike its "
        "training data (black frame, tiny, not a fundus, turned) get a one-line warning on stderr.",
        epilog="Exit status: 0 written, 1 drift detected with --check-drift (as odir check-drift; the predictions are "
        "written), 2 bad input (no images, an unknown model or alias), 3 tracking server or object store "
        "unreachable.",
    )  # fmt: skip
    predict.add_argument("--model", default="models:/odir-ensemble@champion",
                         help="registered model URI (default models:/odir-ensemble@champion)")  # fmt: skip
    predict.add_argument("--images", required=True, help="folder of images")
    predict.add_argument("--out", default="predictions.csv", help="output CSV (default predictions.csv)")
    predict.add_argument(
        "--check-drift", action="store_true",
        help="also compare the images with the model's training reference (as odir check-drift): the report is "
        "printed and logged, the CSV gets the columns ood and ood_reasons, and the exit status is check-drift's "
        "(1 on drift, the predictions written all the same)",
    )  # fmt: skip
    _backend_argument(predict)
    predict.set_defaults(handler=_cmd_predict)


def _cmd_explain(args: argparse.Namespace) -> int:
    from steps.explain import INDEX_FILE, explain
    from steps.support.manifest import image_files

    images = image_files(args.images)
    check_output(args.out, folder=True)
    tracking.setup()
    registry.registered_version(args.model)  # a wrong URI or a model that is not there: one line, before the work
    overlays = explain(args.model, images, args.out)
    out = Path(args.out).resolve()
    print(f"{len(overlays)} Grad-CAM overlays ({len(images)} images x {len(LABELS)} classes) from {args.model} "
          f"written to {out}; index: {out / INDEX_FILE}")  # fmt: skip
    return 0


def add_explain(commands: argparse._SubParsersAction) -> None:
    explain = commands.add_parser("explain", help="Grad-CAM overlays per image and class for a registered model")
    explain.add_argument("--model", default="models:/odir-ensemble@champion",
                         help="registered model URI, a member or the ensemble "
                         "(default models:/odir-ensemble@champion)")  # fmt: skip
    explain.add_argument("--images", required=True, help="folder of images")
    explain.add_argument("--out", default="gradcam",
                         help="output folder for <image stem>_<class>.png and index.csv (default gradcam)")  # fmt: skip
    explain.set_defaults(handler=_cmd_explain)


def _cmd_check_drift(args: argparse.Namespace) -> int:
    from steps.drift import check_images, format_report
    from steps.support.manifest import image_files

    report = check_images(image_files(args.images), args.model, alpha=args.alpha, backend=args.backend)
    print(format_report(report))
    line, failed = _verdict(report, args.fail_on_ood)
    print(line)
    return EXIT_FAILED if failed else 0


def _verdict(report: DriftReport, fail_on_ood: bool | None) -> tuple[str, bool]:
    """The last line of a drift check and whether it fails (``check-drift`` and ``predict --check-drift`` alike):
    drift, or with ``fail_on_ood`` any image out of distribution (None: the command has no such flag)."""
    failed = report.drift or bool(fail_on_ood and report.ood_count > 0)
    hint = {True: "", False: " (listed above; --fail-on-ood fails on them)", None: " (listed above)"}[fail_on_ood]
    return (f"{'FAIL' if failed else 'PASS'}: {'drift' if report.drift else 'no drift'}, {report.ood_count} image(s) "
            f"out of distribution{hint}", failed)  # fmt: skip


def add_check_drift(commands: argparse._SubParsersAction) -> None:
    check_drift = commands.add_parser(
        "check-drift", help="compare new images with the reference images of a registered ensemble (drift, outliers)",
        description="Compares a folder of new images with the drift reference stored with a registered ensemble "
        "version (statistics and embeddings of images like its training data that its model never trained on: val, "
        "or a held-out fold): a KS test per image statistic and an MMD test on the embeddings, Holm-corrected at "
        "--alpha, and per image whether it is out of distribution (black frame, tiny, not a fundus, turned, "
        "embedding far from the reference). Logs an MLflow run (step drift) with the per-image flags.",
        epilog="Exit status: 0 no drift, 1 drift detected (or, with --fail-on-ood, any image out of distribution), "
        "2 bad input (no images, an unknown model, a version registered without a reference), 3 tracking server or "
        "object store unreachable.",
    )  # fmt: skip
    check_drift.add_argument("--images", required=True, help="folder of new images")
    check_drift.add_argument("--model", default="models:/odir-ensemble@champion",
                             help="registered ensemble URI (default models:/odir-ensemble@champion)")  # fmt: skip
    check_drift.add_argument("--alpha", type=float, default=0.05,
                             help="chance of a false drift alarm on images like the training ones (default "
                             "0.05)")  # fmt: skip
    check_drift.add_argument("--fail-on-ood", action="store_true",
                             help="exit 1 also when any single image is out of distribution (a few are in any "
                             "large folder of real photos: the flag's threshold is the reference's 99th percentile "
                             "x 1.25)")  # fmt: skip
    _backend_argument(check_drift)
    check_drift.set_defaults(handler=_cmd_check_drift)


def _cmd_verify(args: argparse.Namespace) -> int:
    from steps.support import integrity

    tracking.setup()
    reports = integrity.verify_registry(fix=args.fix)
    if not reports:
        print("no champion or challenger in the registry: nothing to verify")
        return 0
    for report in reports:
        aliases = f" @{', @'.join(report.aliases)}" if report.aliases else ""
        state = "ok" if report.recorded else "ok (registered before digests were recorded: not checked)"
        if report.problems:
            state = "BROKEN: " + "; ".join(report.problems) + (" -> set aside" if report.set_aside else "")
        print(f"{report.uri}{aliases}: {state}")
    broken = [r for r in reports if r.problems]
    if not broken:
        return 0
    if args.fix:
        print("the broken versions no longer hold aliases and their runs are FAILED: `odir full` (same profile and "
              "data) retrains or rebuilds them and promotes a sound version")  # fmt: skip
    else:
        print("run `odir verify --fix` to set them aside, then `odir full` to rebuild them")
    return 1


def add_verify(commands: argparse._SubParsersAction) -> None:
    verify = commands.add_parser(
        "verify", help="check the SHA-256 of the champion's, challengers' and their members' files",
        description="Downloads every version holding an alias (champion, challenger) and the members of aliased "
        "ensembles, and compares their files with the SHA-256 digests recorded when they were registered. Exit 1 "
        "when something is broken.",
    )  # fmt: skip
    verify.add_argument(
        "--fix",
        action="store_true",
        help="set broken versions aside (aliases removed, runs FAILED) so `odir full` rebuilds them",
    )
    verify.set_defaults(handler=_cmd_verify)


def _cmd_compare(args: argparse.Namespace) -> int:
    from components.models.tta import STUDY_VIEWS
    from components.monitoring.explain import GALLERY_PER_KIND
    from steps import compare, evaluate, ingest
    from steps.support.manifest import LABELLED_SPLITS, load_manifest
    from steps.support.scored import fitted_on

    tracking.setup()
    uris = [f"models:/{'/'.join(registry.registered_version(uri))}" for uri in args.models]  # one line if unknown
    if len(set(uris)) < 2:  # before any ingest or prediction
        raise OdirError(f"compare needs two different versions or more; {' '.join(args.models)} resolve to "
                        f"{', '.join(dict.fromkeys(uris))}")  # fmt: skip
    manifest_uri = ingest.run(ingest.IngestConfig(data_root=args.data)).manifest_uri
    manifest = load_manifest(manifest_uri)
    if args.split not in LABELLED_SPLITS or not manifest.has_split(args.split):
        present = ", ".join(s for s in LABELLED_SPLITS if manifest.has_split(s)) or "none"
        raise OdirError(f"--split {args.split}: {args.data} has no labelled split of that name (labelled: {present})")
    for given, uri in zip(args.models, uris, strict=True):  # an unfair pair is refused before any prediction
        if reason := fitted_on(uri, manifest, args.split):
            named = given if given == uri else f"{given} ({uri})"
            raise OdirError(f"{named} has no fair score on {args.split} of this data: {reason}; compare on images no "
                            "model trained or was tuned on")  # fmt: skip
    for uri in uris:  # predictions of the split, reused where this data was evaluated before
        evaluate.run(evaluate.EvaluateConfig(model_uri=uri, manifest_uri=manifest_uri, split=args.split,
                                             views=STUDY_VIEWS, gradcam_gallery=GALLERY_PER_KIND))  # fmt: skip
    result = compare.run(compare.CompareConfig(model_uris=tuple(uris), manifest_uri=manifest_uri, split=args.split))
    print(f"{len(uris)} models on {args.split} of {args.data}, each at its own thresholds; 95% intervals and "
          f"P({uris[0]} better) from a paired bootstrap over patients:\n")  # fmt: skip
    print(result.markdown)
    print(f"\nlogged as the compare run {result.run_id}")
    return 0


def add_compare(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser(
        "compare", help="score registered models on the same labelled images, each against the first (paired)",
        description="Scores each registered version (member or ensemble, by URI or alias) on one labelled split of a "
        "dataset, at its own thresholds, with 95% intervals from a bootstrap over patients, and each one's paired "
        "difference against the first with P(first better), as promotion compares; logs a compare run. A version "
        "that trained or was tuned on those images is refused: it has no fair score there.",
    )  # fmt: skip
    compare.add_argument("models", nargs="+", metavar="MODEL",
                         help="models:/NAME/VERSION or models:/NAME@ALIAS; the first is the reference")  # fmt: skip
    compare.add_argument("--data", required=True, help="dataset root (or s3://) holding the split")
    compare.add_argument("--split", default="offsite_test", help="a labelled split (default offsite_test)")
    compare.set_defaults(handler=_cmd_compare)
