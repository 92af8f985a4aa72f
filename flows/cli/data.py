"""The data commands of ``odir``: ``validate``, ``demo-data``, ``bucket``, ``ingest`` and ``upload``."""

from __future__ import annotations

import argparse
from pathlib import Path

from components import LABELS
from components.errors import OdirError
from components.outputs import check_output
from flows.cli.common import check_data_root
from flows.failures import EXIT_INVALID
from steps.support import tracking


def _print_report(root: Path, check_images: bool) -> int:
    from components.data.splits import validate_dataset

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


def add_validate(commands: argparse._SubParsersAction) -> None:
    validate = commands.add_parser("validate", help="check a dataset root: CSVs, labels, ids and every image")
    validate.add_argument("root", help="dataset root (train.csv, images/train/, ...)")
    validate.add_argument("--no-images", action="store_true", help="check the CSVs only, not the image files")
    validate.set_defaults(handler=_cmd_validate)


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from components.data.synth import SynthSizes, write_synthetic_dataset

    check_output(args.out, folder=True)
    sizes = SynthSizes(args.n_train, args.n_val, args.n_offsite, args.n_onsite)
    root = write_synthetic_dataset(args.out, size=args.size, sizes=sizes, seed=args.seed)
    print(f"Synthetic dataset written to {root.resolve()} (seed {args.seed}, {args.size}x{args.size} px).")
    return 0


def add_demo_data(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo-data", help="write a synthetic fundus dataset in the real layout")
    demo.add_argument("out", help="output folder")
    demo.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    demo.add_argument("--n-train", type=int, default=240, help="train images (default 240)")
    demo.add_argument("--n-val", type=int, default=60, help="val images (default 60)")
    demo.add_argument("--n-offsite", type=int, default=60, help="offsite_test images (default 60)")
    demo.add_argument("--n-onsite", type=int, default=40, help="onsite_test template images (default 40)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(handler=_cmd_demo_data)


def _cmd_bucket(args: argparse.Namespace) -> int:
    from steps.support.storage import ensure_bucket

    print(f"bucket {args.name}: {'created' if ensure_bucket(args.name) else 'exists'}")
    return 0


def add_bucket(commands: argparse._SubParsersAction) -> None:
    bucket = commands.add_parser("bucket", help="create an S3 bucket unless it exists (AWS_ENDPOINT_URL, AWS_*)")
    bucket.add_argument("name", help="bucket name")
    bucket.set_defaults(handler=_cmd_bucket)


def _ingest_drift(manifest_uri: str) -> None:
    """A new dataset's train images (a fixed sample of at most 500) against the champion's drift reference, when
    there is a champion with one."""
    from components.monitoring.reference import reference_sample
    from steps.drift import check_images
    from steps.support.manifest import load_manifest

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

    check_data_root(args.data)
    tracking.setup()
    result = ingest.run(ingest.IngestConfig(data_root=args.data))
    counts = ", ".join(f"{split} {n}" for split, n in result.counts.items())
    print(f"ingested {args.data}: {counts}; digest {result.data_digest[:12]}; manifest {result.manifest_uri}")
    _ingest_drift(result.manifest_uri)
    uri = args.data if args.data.startswith("s3://") else str(Path(args.data).resolve())  # a retrain runs elsewhere
    print(announce_dataset(uri, result.data_digest, source="odir ingest"))
    return 0


def add_ingest(commands: argparse._SubParsersAction) -> None:
    ingest = commands.add_parser(
        "ingest", help="validate a dataset and log its manifest; announce it when it differs from the champion's",
        description="Validates a dataset root (local or s3://), logs its manifest and digest to MLflow, and when the "
        "digest differs from the champion's sends the Prefect event odir.dataset.changed (PREFECT_API_URL), on "
        "which the odir/retrain deployment starts a run.",
    )  # fmt: skip
    ingest.add_argument("data", help="dataset root (train.csv, images/train/, ...) or s3://bucket/prefix")
    ingest.set_defaults(handler=_cmd_ingest)


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


def add_upload(commands: argparse._SubParsersAction) -> None:
    upload = commands.add_parser(
        "upload", help="upload a dataset folder to s3://bucket/prefix; announce it when it differs from the champion's",
        description="Validates the folder, uploads it, and when its digest differs from the champion's sends the "
        "Prefect event odir.dataset.changed (PREFECT_API_URL), on which the odir/retrain deployment starts a run.",
    )  # fmt: skip
    upload.add_argument("folder", help="dataset root to upload")
    upload.add_argument("uri", help="destination s3://bucket/prefix")
    upload.set_defaults(handler=_cmd_upload)
