"""The training commands of ``odir``: ``full`` (the flow ``odir`` in this process), ``experiments`` (the flow
``odir-experiments``) and ``train`` (checkpoints only, no tracking)."""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from components.outputs import check_output
from flows.cli.common import check_inputs, print_store, runs_page
from steps.support import tracking

if TYPE_CHECKING:
    from components.data.splits import Split
    from flows.summary import PipelineSummary


def _cmd_train(args: argparse.Namespace) -> int:
    from components.config import load_profile
    from components.data.dataset import FundusDataset
    from components.data.splits import load_split
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
    from components.training.checkpoints import load_trained

    model, spec = load_trained(checkpoint)
    dataset = FundusDataset.from_split(offsite, size)
    probs = predict_images(model, dataset, size, ("identity",), spec.batch_size, preprocess=spec.fundus_preprocess())
    report = multilabel_report(offsite.labels, probs)
    print(f"{'':<24} offsite f1_macro {report['f1_macro']:.4f}  offsite f1_course {report['f1_course']:.4f}")


def add_train(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train the models of a profile (checkpoints only, no tracking)")
    train.add_argument("--profile", default="demo", help="profile name in configs/ or a YAML path (default demo)")
    train.add_argument("--data", required=True, help="dataset root")
    train.add_argument("--model", help="train only this model of the profile")
    train.add_argument("--workdir", default=".odir/train", help="checkpoint folder (default .odir/train)")
    train.add_argument("--restart", action="store_true", help="ignore existing checkpoints instead of resuming")
    train.set_defaults(handler=_cmd_train)


def _warm_start() -> None:
    """Gets Prefect's API up while this thread does the rest of the start-up: the two overlap on 2 cores.

    With no ``PREFECT_API_URL`` the first flow run starts Prefect's ephemeral server, 6-10 s on a small machine, and
    waits; meanwhile this thread imports what the pipeline will import (the flows, ``mlflow.pytorch``, timm with
    torchvision, matplotlib: 5 s), saves a throw-away model (MLflow's first model save in a process scans every
    installed package: 1 s), opens, on first use creates, the MLflow store (1.3 s), imports the ONNX exporter and
    runtime (the ensemble's exports: 1-2.5 s), computes every step's code fingerprint (a pure function of the source
    files, cached for the process: 0.7-3 s that the steps' first runs paid) and freezes what start-up left
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
        from components.models.runtime import import_exporter
        from flows import freeze_startup_objects
        from steps.support import fingerprint, pipeline_run

        try:
            import_exporter()
            fingerprint.compute_all()
            pipeline_run.save_a_throwaway_model()  # and mlflow.pytorch imported with it
            tracking.setup(tracking.DEFAULT_EXPERIMENT)
        except Exception as error:  # the steps meet it again, with their retries and messages
            logging.getLogger(__name__).debug("warm start: %s", error)
        freeze_startup_objects()
    finally:
        gc.enable()
    connecting.join()  # the flow run must not start a second server while this one comes up


def _cmd_full(args: argparse.Namespace) -> int:
    from components.config import load_profile, resolve_profile_path

    check_inputs(args.profile, args.data, load_profile, resolve_profile_path)
    check_output(args.out or Path("outputs") / f"submission-{Path(args.profile).stem}.csv")
    print_store()
    _warm_start()
    from flows import without_heartbeats
    from flows.odir import odir

    with without_heartbeats():
        summary = odir(profile=args.profile, data=args.data, out=args.out, force=args.force, dispatch=args.dispatch)
    _print_summary(summary)
    return 0


def _print_summary(summary: PipelineSummary) -> None:
    """The pipeline's result as a reader wants it: scores with intervals, the decision, where things are."""
    from flows.artifacts import rate, run_url
    from flows.summary import seed_spread

    print(f"\nodir pipeline finished: profile {summary.profile}, data {summary.data_digest[:12]}")
    built = summary.built
    if built is None:  # retraining found nothing changed
        print(f"  {summary.decision}: champion version {summary.champion_version}")
        return
    split = "cross-fitted out-of-fold" if built.scored_split == "cv" else built.scored_split
    print(f"\nensemble {built.model_uri} on {split} ({built.split_mode}; 95% intervals: bootstrap over patients)")
    for name, score in built.scores.items():
        shown = "  n/a" if score.value is None else f"{score.value:.3f}"
        interval = f"  [{score.low:.3f}, {score.high:.3f}]" if score.has_interval else ""
        print(f"  {name:<10} {shown}{interval}")
    for metric in ("f1_macro", "f1_course"):
        if spread := seed_spread(built.seeds, metric):
            each = ", ".join(f"{getattr(s, metric).value:.3f}" for s in built.seeds)
            print(f"over {len(built.seeds)} seeds: {metric} mean {spread[0]:.3f}, sd {spread[1]:.3f} ({each})")
    if built.comparison_markdown:
        print(f"\nmembers and ensemble on {split}, paired over patients against the best member:")
        print(built.comparison_markdown)
    print(f"decision: {summary.decision}{summary.promotion_evidence()}; champion is version "
          f"{summary.champion_version}")  # fmt: skip
    if built.referral:
        referral = built.referral
        referred, kept = rate(referral.error_rate_referred), rate(referral.error_rate_kept)
        print(f"referred to a grader: {referral.n_referred} of {referral.n} on {split} (error rate "
              f"{referred} referred, {kept} kept)")  # fmt: skip
    if built.submission:
        print(f"submission: {built.submission}")
    if built.gallery:
        page = run_url("http://127.0.0.1:5000", built.gallery.run_id)
        print(f"Grad-CAM gallery (true/false positives, misses per class): {built.gallery.uri}\n"
              f"  in the MLflow UI: {page}/artifacts?workflowType=machine_learning (gradcam/)")  # fmt: skip
    print("\nLook at the runs and models:  .venv/bin/mlflow ui --backend-store-uri " + tracking.tracking_uri())
    print(f"  then open {runs_page('http://127.0.0.1:5000')} (the pipeline runs, their scores in the name)")
    print("Or start everything (Prefect UI, MLflow UI, deployments):  make up")
    print(f"  the Prefect UI's Artifacts page then shows odir-{summary.profile}-summary (scores, decision, "
          "links) and the per-class table")  # fmt: skip


def add_full(commands: argparse._SubParsersAction) -> None:
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


def _cmd_experiments(args: argparse.Namespace) -> int:
    from components.config import load_grid, resolve_grid_path

    check_inputs(args.grid, args.data, load_grid, resolve_grid_path)
    if args.out:
        check_output(args.out, folder=True)
    print_store()
    _warm_start()
    from flows import without_heartbeats
    from flows.experiments import odir_experiments

    with without_heartbeats():
        summary = odir_experiments(grid=args.grid, data=args.data, out=args.out, force=args.force)
    print(f"\n{summary.rows} experiments; report: {summary.report}/results.md")
    return 0


def add_experiments(commands: argparse._SubParsersAction) -> None:
    experiments = commands.add_parser("experiments", help="run an experiment grid (flow odir-experiments) in-process")
    experiments.add_argument("--grid", default="seed", help="grid name in configs/experiments/ or a YAML path")
    experiments.add_argument("--data", help="dataset root (default: synthetic demo data)")
    experiments.add_argument("--out", help="report folder (default outputs/experiments-<grid>)")
    experiments.add_argument("--force", action="store_true", help="retrain and re-evaluate everything")
    experiments.set_defaults(handler=_cmd_experiments)
