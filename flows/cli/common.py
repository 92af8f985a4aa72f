"""What several command groups of ``odir`` share: the input checks that run before any work, and the lines that say
where the records went."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from components.inputs import check_checkpoints, check_dataset_splits
from steps.support import tracking

if TYPE_CHECKING:
    from components.config import Profile


def check_inputs(profile: str, data: str | None, load: Callable[[str], Profile], source: Callable[[str], Path]) -> None:
    """Fails in a second, before Prefect's server starts or a run is opened, on a bad profile (``load``: a profile or
    grid loader, ``source``: where it reads it from), one of its checkpoints, or a data root that is missing or lacks
    a split the profile's protocol needs (an ``s3://`` root: at ingest, inside the run)."""
    config = load(profile)  # ConfigError naming the file and field
    check_checkpoints(config, str(source(profile)))
    check_data_root(data)
    if data and not data.startswith("s3://"):
        check_dataset_splits(config, data)


def check_data_root(data: str | None) -> None:
    """A local dataset root that is missing or not a folder: one line naming it (S3 roots are checked on use)."""
    from components.errors import DataError, Problem

    if data and not data.startswith("s3://") and not Path(data).is_dir():
        raise DataError([Problem(data, "dataset root not found" if not Path(data).exists() else "not a folder")])


def print_store() -> None:
    """Where the run's records and files go: the line that answers "which store did this use?"."""
    files = tracking.store_files()
    artifacts = f"artifacts {files.artifacts}" if files.artifacts else "artifacts on the server"
    print(f"store {tracking.tracking_uri()} ({artifacts}; checkpoints {files.work})", flush=True)


def runs_page(ui: str) -> str:
    """The MLflow UI's page of the pipeline runs. MLflow 3's UI opens in its GenAI mode unless the URL says
    otherwise (the experiment's kind tag is not enough in 3.17)."""
    experiment_id = tracking.setup()
    return (f"{ui}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            "&searchFilter=tags.%60odir.step%60%3D%27pipeline%27")  # fmt: skip
