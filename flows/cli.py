"""The ``odir`` command line: one entry point for users, each sub-command a thin call into the library.

Bad input (``OdirError``) ends with its message on stderr and exit status 2, never a traceback, and so do credentials
the tracking server or the Prefect server refuses (:func:`flows.access.refused`); a tracking server or object store
that does not answer under the retry policy (:class:`steps.support.tracking.RetryPolicy`) ends with one line naming
it and exit status 3. Outputs are checked before the work starts.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from components import LABELS
from components.errors import OdirError
from components.outputs import check_output
from flows.deployments import SERVED
from steps.support import tracking

if TYPE_CHECKING:
    from components.data.dataset import Split

EXIT_INVALID = 2
EXIT_UNREACHABLE = 3
# the commands that check the tracking server and object store answer before any work
STORE_COMMANDS = ("full", "experiments", "predict", "explain", "check-drift", "verify", "bucket", "upload", "ingest")


def _print_report(root: Path, check_images: bool) -> int:
    from components.data.dataset import validate_dataset

    report = validate_dataset(root, check_images=check_images)
    print(f"Dataset {report.root}")
    for name, split in report.splits.items():
        counts = "  ".join(f"{label} {int(split.labels[:, c].sum()):4d}" for c, label in enumerate(LABELS))
        multi = int((split.labels.sum(axis=1) > 1).sum())
        print(f"  {name:<13} {len(split):5d} images   {counts}   two or more labels: {multi}")
    if report.ok:
        print(f"OK: {len(report.splits)} split(s) valid ({', '.join(report.checked)}).")
        return 0
    print(f"INVALID: {len(report.problems)} problem(s):")
    for problem in report.problems:
        print(f"  {problem}")
    return EXIT_INVALID


def _cmd_validate(args: argparse.Namespace) -> int:
    return _print_report(Path(args.root), check_images=not args.no_images)


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from components.data.synth import SynthSizes, write_synthetic_dataset

    check_output(args.out, folder=True)
    sizes = SynthSizes(args.n_train, args.n_val, args.n_offsite, args.n_onsite)
    root = write_synthetic_dataset(args.out, size=args.size, sizes=sizes, seed=args.seed)
    print(f"Synthetic dataset written to {root.resolve()} (seed {args.seed}, {args.size}x{args.size} px).")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from components.config import load_profile
    from components.data.dataset import FundusDataset, load_split
    from components.training.loop import train

    profile = load_profile(args.profile)
    specs = [profile.model(args.model)] if args.model else profile.models
    root = Path(args.data)
    splits = {name: load_split(root, name) for name in ("train", "val")}
    offsite = load_split(root, "offsite_test") if (root / "offsite_test.csv").exists() else None
    for spec in specs:
        train_data, val_data = (FundusDataset.from_split(splits[n], spec.image_size) for n in ("train", "val"))
        result = train(
            spec, train_data, val_data, Path(args.workdir) / profile.name / spec.name, resume=not args.restart
        )
        scores = result.best_metrics
        print(
            f"{spec.name:<24} best epoch {result.best_epoch:>3}  val f1_macro {scores['val_f1_macro']:.4f}  "
            f"val f1_course {scores['val_f1_course']:.4f}  ({result.seconds:.0f} s)  {result.best_checkpoint}"
        )
        if offsite is not None:
            _print_offsite(result.best_checkpoint, offsite, spec.image_size)
    return 0


def _print_offsite(checkpoint: Path, offsite: Split, size: int) -> None:
    from components.data.dataset import FundusDataset
    from components.evaluation.metrics import multilabel_report
    from components.models.inference import predict_images
    from components.training.loop import load_trained

    model, spec = load_trained(checkpoint)
    dataset = FundusDataset.from_split(offsite, size)
    probs = predict_images(model, dataset, size, ("identity",), spec.batch_size, preprocess=spec.fundus_preprocess())
    report = multilabel_report(offsite.labels, probs)
    print(f"{'':<24} offsite f1_macro {report['f1_macro']:.4f}  offsite f1_course {report['f1_course']:.4f}")


def _cmd_predict(args: argparse.Namespace) -> int:
    from steps.support.contracts import image_files, predict_paths

    images = image_files(args.images)
    check_output(args.out)
    tracking.setup()
    tracking.registered_version(args.model)  # a wrong URI or a model that is not there: one line, before the work
    if args.check_drift:
        from steps.support.contracts import load_drift_reference

        load_drift_reference(args.model)  # a version without one: one line before the work, not after it
    prediction = predict_paths(args.model, [str(p) for p in images])
    frame = prediction.frame.round(6)
    frame.insert(0, "id", [p.name for p in images])
    if args.check_drift:
        frame = frame.assign(**_drift_columns(images, args.model))
    frame.to_csv(args.out, index=False)
    referred = int(frame["refer"].sum())
    print(f"{len(frame)} predictions from {args.model} written to {Path(args.out).resolve()}")
    print(f"{referred} of {len(frame)} referred to a grader (refer = 1: near a threshold, or views or members "
          "disagree)")  # fmt: skip
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from steps.explain import INDEX_FILE, explain
    from steps.support.contracts import image_files

    images = image_files(args.images)
    check_output(args.out, folder=True)
    tracking.setup()
    tracking.registered_version(args.model)  # a wrong URI or a model that is not there: one line, before the work
    overlays = explain(args.model, images, args.out)
    out = Path(args.out).resolve()
    print(f"{len(overlays)} Grad-CAM overlays ({len(images)} images x {len(LABELS)} classes) from {args.model} "
          f"written to {out}; index: {out / INDEX_FILE}")  # fmt: skip
    return 0


def _cmd_check_drift(args: argparse.Namespace) -> int:
    from steps.drift import check_images, format_report
    from steps.support.contracts import image_files

    report = check_images(image_files(args.images), args.model, alpha=args.alpha)
    print(format_report(report))
    failed = report.drift or (args.fail_on_ood and report.ood_count > 0)
    hint = "" if args.fail_on_ood else " (listed above; --fail-on-ood fails on them)"
    print(f"{'FAIL' if failed else 'PASS'}: {'drift' if report.drift else 'no drift'}, {report.ood_count} image(s) "
          f"out of distribution{hint}")  # fmt: skip
    return 1 if failed else 0


def _drift_columns(images: list[Path], model_uri: str) -> dict[str, list]:
    """``odir predict --check-drift``: the images against the model's drift reference, the report printed and
    logged; returns the per-image columns ``ood`` (0/1) and ``ood_reasons``."""
    from steps.drift import check_images, format_report

    report = check_images(images, model_uri)
    print(format_report(report))
    return {"ood": [int(c.out_of_distribution) for c in report.images],
            "ood_reasons": ["; ".join(c.reasons) for c in report.images]}  # fmt: skip


def _warm_start() -> None:
    """Gets Prefect's API up while this thread does the rest of the start-up: the two overlap on 2 cores.

    With no ``PREFECT_API_URL`` the first flow run starts Prefect's ephemeral server, 6-10 s on a small machine, and
    waits; meanwhile this thread imports what the pipeline will import (the flows, ``mlflow.pytorch``, timm with
    torchvision, matplotlib: 5 s), saves a throw-away model (MLflow's first model save in a process scans every
    installed package: 1 s), opens, on first use creates, the MLflow store (1.3 s) and freezes what start-up left
    (``flows.freeze_startup_objects``), with the garbage collector off until then: start-up only allocates what
    lives as long as the process, and the collector's full passes over it took 2 s. Nothing here is needed: a
    Prefect API or tracking store that fails is left to the flow run and its steps, which retry and report it.
    """
    import gc
    import threading

    gc.disable()
    try:
        from prefect.client.orchestration import get_client

        def connect() -> None:
            with contextlib.suppress(Exception), get_client(sync_client=True) as client:
                client.api_healthcheck()

        connecting = threading.Thread(target=connect, name="prefect-api", daemon=True)
        connecting.start()
        import matplotlib.figure  # noqa: F401
        import timm  # noqa: F401  # the backbones' library, with torchvision: 1.3 s on the first model built

        import flows.experiments  # noqa: F401  # and flows.odir
        from flows import freeze_startup_objects
        from steps.support import tracking

        try:
            _save_a_throwaway_model()
            tracking.setup(tracking.DEFAULT_EXPERIMENT)
        except Exception as error:  # the steps meet it again, with their retries and messages
            logging.getLogger(__name__).debug("warm start: %s", error)
        freeze_startup_objects()
    finally:
        gc.enable()
    connecting.join()  # the flow run must not start a second server while this one comes up


def _save_a_throwaway_model() -> None:
    import tempfile

    import mlflow.pytorch
    import torch

    mlflow_pytorch_log = logging.getLogger("mlflow.pytorch")
    level = mlflow_pytorch_log.level
    mlflow_pytorch_log.setLevel(logging.ERROR)  # its pickle-format warning belongs to the real models
    try:
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.pytorch.save_model(
                torch.nn.Identity(), f"{tmp}/model", serialization_format="pickle", pip_requirements=["torch"]
            )
    finally:
        mlflow_pytorch_log.setLevel(level)


def _check_inputs(profile: str, data: str | None, load: Callable[[str], object]) -> None:
    """Fails in a second, before Prefect's server starts or a run is opened, on a bad profile or data root."""
    load(profile)  # ConfigError naming the file and field
    _check_inputs_data(data)


def _check_inputs_data(data: str | None) -> None:
    from components.errors import DataError, Problem

    if data and not data.startswith("s3://") and not Path(data).is_dir():
        raise DataError([Problem(data, "dataset root not found" if not Path(data).exists() else "not a folder")])


def _print_store() -> None:
    """Where the run's records and files go: the line that answers "which store did this use?"."""
    files = tracking.store_files()
    artifacts = f"artifacts {files.artifacts}" if files.artifacts else "artifacts on the server"
    print(f"store {tracking.tracking_uri()} ({artifacts}; checkpoints {files.work})", flush=True)


def _cmd_full(args: argparse.Namespace) -> int:
    from components.config import load_profile

    _check_inputs(args.profile, args.data, load_profile)
    check_output(args.out or Path("outputs") / f"submission-{Path(args.profile).stem}.csv")
    _print_store()
    _warm_start()
    from flows import without_heartbeats
    from flows.odir import odir

    with without_heartbeats():
        summary = odir(profile=args.profile, data=args.data, out=args.out, force=args.force, dispatch=args.dispatch)
    _print_summary(summary)
    return 0


def _cmd_experiments(args: argparse.Namespace) -> int:
    from components.config import load_grid

    _check_inputs(args.grid, args.data, load_grid)
    if args.out:
        check_output(args.out, folder=True)
    _print_store()
    _warm_start()
    from flows import without_heartbeats
    from flows.experiments import odir_experiments

    with without_heartbeats():
        summary = odir_experiments(grid=args.grid, data=args.data, out=args.out, force=args.force)
    print(f"\n{summary['rows']} experiments; report: {summary['report']}/results.md")
    return 0


def _runs_page(ui: str) -> str:
    """The MLflow UI's page of the pipeline runs. MLflow 3's UI opens in its GenAI mode unless the URL says
    otherwise (the experiment's kind tag is not enough in 3.17)."""
    experiment_id = tracking.setup()
    return (f"{ui}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            "&searchFilter=tags.%60odir.step%60%3D%27pipeline%27")  # fmt: skip


def _print_summary(summary: dict) -> None:
    """The pipeline's result as a reader wants it: scores with intervals, the decision, where things are."""
    from flows.artifacts import promotion_evidence, rate, run_url

    print(f"\nodir pipeline finished: profile {summary.get('profile')}, data {summary['data_digest'][:12]}")
    if "scores" not in summary:  # retraining found nothing changed
        print(f"  {summary['decision']}: champion version {summary['champion_version']}")
        return
    split = "cross-fitted out-of-fold" if summary["scored_split"] == "cv" else summary["scored_split"]
    print(
        f"\nensemble {summary['ensemble']} on {split} ({summary['split_mode']}; 95% intervals: bootstrap over patients)"
    )
    for name, (value, low, high) in summary["scores"].items():
        shown = "  n/a" if value is None else f"{value:.3f}"
        interval = "" if low is None or low != low else f"  [{low:.3f}, {high:.3f}]"
        print(f"  {name:<10} {shown}{interval}")
    members = ", ".join(
        f"{name} {score:.3f}" for name, score in summary["member_f1_macro"].items() if score is not None
    )
    scored_on = "out-of-fold" if summary["split_mode"].startswith("cv") else "val, at the best epoch"
    print(f"members' f1_macro ({scored_on}): {members}")
    print(f"decision: {summary['decision']}{promotion_evidence(summary)}; champion is version "
          f"{summary['champion_version']}")  # fmt: skip
    if summary.get("referral"):
        referral = summary["referral"]
        referred, kept = rate(referral["error_rate_referred"]), rate(referral["error_rate_kept"])
        print(f"referred to a grader: {referral['n_referred']} of {referral['n']} on {split} (error rate "
              f"{referred} referred, {kept} kept)")  # fmt: skip
    if summary.get("submission"):
        print(f"submission: {summary['submission']}")
    if summary.get("gallery"):
        page = run_url("http://127.0.0.1:5000", summary["gallery"]["run_id"])
        print(f"Grad-CAM gallery (true/false positives, misses per class): {summary['gallery']['uri']}\n"
              f"  in the MLflow UI: {page}/artifacts?workflowType=machine_learning (gradcam/)")  # fmt: skip
    print("\nLook at the runs and models:  .venv/bin/mlflow ui --backend-store-uri " + _tracking_uri_for_humans())
    print(f"  then open {_runs_page('http://127.0.0.1:5000')} (the pipeline runs, their scores in the name)")
    print("Or start everything (Prefect UI, MLflow UI, deployments):  make up")
    print(f"  the Prefect UI's Artifacts page then shows odir-{summary.get('profile')}-summary (scores, decision, "
          "links) and the per-class table")  # fmt: skip


def _tracking_uri_for_humans() -> str:
    from steps.support import tracking

    return tracking.tracking_uri()


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


def _cmd_serve(args: argparse.Namespace) -> int:
    from flows.deployments import serve_all

    serve_all(limit=args.limit)
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from flows.stack import up

    try:
        urls = up(args.prefect_port, args.mlflow_port)
    except RuntimeError as error:  # a service that did not come up: the message names it and its log
        print(f"odir up: {error}", file=sys.stderr)
        return 1
    print(f"\nPrefect UI  {urls['prefect_ui']}\nMLflow UI   {_runs_page(urls['mlflow_ui'])}\n")
    print(f"Run the pipeline:\n  export PREFECT_API_URL={urls['api']}")
    print("  .venv/bin/prefect deployment run odir/full --watch")
    print("Stop everything:  make down")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from flows.stack import down

    stopped = down()
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


def _cmd_bucket(args: argparse.Namespace) -> int:
    from steps.support.storage import ensure_bucket

    print(f"bucket {args.name}: {'created' if ensure_bucket(args.name) else 'exists'}")
    return 0


def _cmd_mlflow_users(args: argparse.Namespace) -> int:
    from flows.access import ensure_users

    print("\n".join(ensure_users()))
    return 0


def _cmd_upload(args: argparse.Namespace) -> int:
    from flows.events import announce_dataset
    from steps.ingest import dataset_digest
    from steps.support.storage import split_s3, upload_folder

    if not Path(args.folder).is_dir():
        raise OdirError(f"{args.folder}: {'not found' if not Path(args.folder).exists() else 'not a folder'}")
    split_s3(args.uri)
    digest = dataset_digest(args.folder)  # an invalid dataset is refused before anything is uploaded
    print(f"{upload_folder(args.folder, args.uri)} files uploaded to {args.uri}")
    tracking.connect()  # reads the champion only: a read-only identity may upload
    print(announce_dataset(args.uri, digest, source="odir upload"))
    return 0


def _ingest_drift(manifest_uri: str) -> None:
    """A new dataset's train images (a fixed sample of at most 500) against the champion's drift reference, when
    there is a champion with one."""
    from components.monitoring.drift import reference_sample
    from steps.drift import check_images
    from steps.support.contracts import load_manifest

    paths = load_manifest(manifest_uri).paths("train")
    sample = [paths[i] for i in reference_sample(len(paths))]  # the reference's size: enough for its tests
    try:
        report = check_images(sample, "models:/odir-ensemble@champion")
    except OdirError as error:  # no champion, or one registered before references (NoDriftReference)
        print(f"no drift check: {error}")
        return
    verdict, moved = "DRIFT" if report.drift else "none", ", ".join(report.moved) or "none"
    print(f"drift against the champion's reference images: {verdict} (features moved: {moved}; "
          f"{report.ood_count} image(s) out of distribution; run {report.run_id})")  # fmt: skip


def _cmd_ingest(args: argparse.Namespace) -> int:
    from flows.events import announce_dataset
    from steps import ingest

    _check_inputs_data(args.data)
    tracking.setup()
    result = ingest.run(ingest.IngestConfig(data_root=args.data))
    counts = ", ".join(f"{split} {n}" for split, n in result.counts.items())
    print(f"ingested {args.data}: {counts}; digest {result.data_digest[:12]}; manifest {result.manifest_uri}")
    _ingest_drift(result.manifest_uri)
    uri = args.data if args.data.startswith("s3://") else str(Path(args.data).resolve())  # a retrain runs elsewhere
    print(announce_dataset(uri, result.data_digest, source="odir ingest"))
    return 0


def _port(text: str) -> int:
    """An argparse type: a TCP port a user may bind (1024-65535)."""
    if not text.isdigit() or not 1024 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port between 1024 and 65535")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="odir",
        description="Train, evaluate, ensemble and ship multi-label classifiers for fundus photographs (D, G, A). "
        "Start with `odir full` (the whole pipeline on the demo data) or `odir up` (Prefect and MLflow UIs).",
        epilog="Exit status: 0 done, 1 failed, 2 bad input, 3 tracking server or object store unreachable. "
        "`odir COMMAND --help` describes each command.",
    )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check a dataset root: CSVs, labels, ids and every image")
    validate.add_argument("root", help="dataset root (train.csv, images/train/, ...)")
    validate.add_argument("--no-images", action="store_true", help="check the CSVs only, not the image files")
    validate.set_defaults(handler=_cmd_validate)

    demo = commands.add_parser("demo-data", help="write a synthetic fundus dataset in the real layout")
    demo.add_argument("out", help="output folder")
    demo.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    demo.add_argument("--n-train", type=int, default=240, help="train images (default 240)")
    demo.add_argument("--n-val", type=int, default=60, help="val images (default 60)")
    demo.add_argument("--n-offsite", type=int, default=60, help="offsite_test images (default 60)")
    demo.add_argument("--n-onsite", type=int, default=40, help="onsite_test template images (default 40)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(handler=_cmd_demo_data)

    train = commands.add_parser("train", help="train the models of a profile (checkpoints only, no tracking)")
    train.add_argument("--profile", default="demo", help="profile name in configs/ or a YAML path (default demo)")
    train.add_argument("--data", required=True, help="dataset root")
    train.add_argument("--model", help="train only this model of the profile")
    train.add_argument("--workdir", default=".odir/train", help="checkpoint folder (default .odir/train)")
    train.add_argument("--restart", action="store_true", help="ignore existing checkpoints instead of resuming")
    train.set_defaults(handler=_cmd_train)

    predict = commands.add_parser("predict", help="label new images with a registered model (the champion by default)")
    predict.add_argument("--model", default="models:/odir-ensemble@champion",
                         help="registered model URI (default models:/odir-ensemble@champion)")  # fmt: skip
    predict.add_argument("--images", required=True, help="folder of images")
    predict.add_argument("--out", default="predictions.csv", help="output CSV (default predictions.csv)")
    predict.add_argument(
        "--check-drift", action="store_true",
        help="also compare the images with the model's training reference (as odir check-drift): the report is "
        "printed and logged, and the CSV gets the columns ood and ood_reasons",
    )  # fmt: skip
    predict.set_defaults(handler=_cmd_predict)

    explain = commands.add_parser("explain", help="Grad-CAM overlays per image and class for a registered model")
    explain.add_argument("--model", default="models:/odir-ensemble@champion",
                         help="registered model URI, a member or the ensemble "
                         "(default models:/odir-ensemble@champion)")  # fmt: skip
    explain.add_argument("--images", required=True, help="folder of images")
    explain.add_argument("--out", default="gradcam",
                         help="output folder for <image stem>_<class>.png and index.csv (default gradcam)")  # fmt: skip
    explain.set_defaults(handler=_cmd_explain)

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
    check_drift.set_defaults(handler=_cmd_check_drift)

    full = commands.add_parser("full", help="run the whole pipeline (flow odir) in this process")
    full.add_argument("--profile", default="demo", help="profile name in configs/ or a YAML path (default demo)")
    full.add_argument("--data", help="dataset root (default: synthetic demo data, generated on first use)")
    full.add_argument("--out", help="submission CSV (default outputs/submission-<profile>.csv)")
    full.add_argument("--force", action="store_true", help="retrain and re-evaluate even if MLflow has the results")
    full.add_argument(
        "--dispatch", choices=("local", "deployment"), default="local",
        help="train here one model after the other (default), or all at once as runs of the odir-train deployment "
        "($ODIR_TRAIN_DEPLOYMENT, default odir-train/gpu) on its pool's workers",
    )  # fmt: skip
    full.set_defaults(handler=_cmd_full)

    experiments = commands.add_parser("experiments", help="run an experiment grid (flow odir-experiments) in-process")
    experiments.add_argument("--grid", default="seed", help="grid name in configs/experiments/ or a YAML path")
    experiments.add_argument("--data", help="dataset root (default: synthetic demo data)")
    experiments.add_argument("--out", help="report folder (default outputs/experiments-<grid>)")
    experiments.add_argument("--force", action="store_true", help="retrain and re-evaluate everything")
    experiments.set_defaults(handler=_cmd_experiments)

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

    serve = commands.add_parser("serve", help=f"serve the deployments {', '.join(SERVED)}")
    serve.add_argument("--limit", type=_positive, default=4, help="flow runs at once (default 4)")
    serve.set_defaults(handler=_cmd_serve)

    up = commands.add_parser("up", help="start a local Prefect server, the MLflow UI and odir serve (127.0.0.1)")
    up.add_argument("--prefect-port", type=_port, default=4200, help="Prefect server and UI port (default 4200)")
    up.add_argument("--mlflow-port", type=_port, default=5000, help="MLflow UI port (default 5000)")
    up.set_defaults(handler=_cmd_up)

    down = commands.add_parser("down", help="stop what odir up started")
    down.set_defaults(handler=_cmd_down)

    bucket = commands.add_parser("bucket", help="create an S3 bucket unless it exists (AWS_ENDPOINT_URL, AWS_*)")
    bucket.add_argument("name", help="bucket name")
    bucket.set_defaults(handler=_cmd_bucket)

    ingest = commands.add_parser(
        "ingest", help="validate a dataset and log its manifest; announce it when it differs from the champion's",
        description="Validates a dataset root (local or s3://), logs its manifest and digest to MLflow, and when the "
        "digest differs from the champion's sends the Prefect event odir.dataset.changed (PREFECT_API_URL), on "
        "which the odir/retrain deployment starts a run.",
    )  # fmt: skip
    ingest.add_argument("data", help="dataset root (train.csv, images/train/, ...) or s3://bucket/prefix")
    ingest.set_defaults(handler=_cmd_ingest)

    users = commands.add_parser(
        "mlflow-users",
        help="create the pipeline and reader users of a tracking server with basic-auth (as its admin)",
        description="Creates the pipeline and reader users (ODIR_PIPELINE_USERNAME / _PASSWORD, ODIR_READER_USERNAME "
        "/ _PASSWORD) on the MLFLOW_TRACKING_URI server, or sets the password of one that exists; run with the "
        "admin's MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (docs/security.md).",
    )
    users.set_defaults(handler=_cmd_mlflow_users)
    upload = commands.add_parser(
        "upload", help="upload a dataset folder to s3://bucket/prefix; announce it when it differs from the champion's",
        description="Validates the folder, uploads it, and when its digest differs from the champion's sends the "
        "Prefect event odir.dataset.changed (PREFECT_API_URL), on which the odir/retrain deployment starts a run.",
    )  # fmt: skip
    upload.add_argument("folder", help="dataset root to upload")
    upload.add_argument("uri", help="destination s3://bucket/prefix")
    upload.set_defaults(handler=_cmd_upload)
    for command in commands.choices.values():  # each command's page opens with what it does
        if command.description is None:
            command.description = next(a.help for a in commands._choices_actions if a.dest == command.prog.split()[-1])
    return parser


def _quiet_prefect(record: logging.LogRecord) -> bool:
    """Drops Prefect's lines that say nothing on a console: "Finished in state Completed()" after every task (it
    does not name the task; the Prefect UI shows the states), and the pointer to its docs under the temporary
    server's start line."""
    if not record.name.startswith("prefect"):
        return True
    message = record.getMessage()
    if message.startswith("Starting temporary server") and "\n" in message:
        record.msg, record.args = message.splitlines()[0], ()
    return not message.startswith("Finished in state Completed")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one sub-command; returns its exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    for chatty in ("httpx", "httpcore", "alembic", "mlflow.system_metrics"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_prefect)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables"
    # pickled models are chosen on purpose (steps/train.py: _log_model; the ensemble's pyfunc) and odir loads
    # checkpoints with weights_only: a warning per model that a user cannot act on
    for logger in ("mlflow.pytorch", "mlflow.pyfunc"):
        logging.getLogger(logger).addFilter(lambda record: "CloudPickle" not in record.getMessage())
    try:
        if args.command in STORE_COMMANDS:
            tracking.check_store()
        return args.handler(args)
    except OdirError as error:
        print(f"odir {args.command}: {error}", file=sys.stderr)
        return EXIT_INVALID
    except Exception as error:
        from flows.access import refused

        if (line := refused(error)) is not None:
            print(f"odir {args.command}: {line}", file=sys.stderr)
            return EXIT_INVALID
        if not tracking.store_unreachable(error):
            raise
        print(f"odir {args.command}: {tracking.unreachable_message(error)}", file=sys.stderr)
        return EXIT_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
