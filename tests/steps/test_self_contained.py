"""The registered ensemble is self-contained: it loads and predicts in a fresh virtualenv that holds only the
distributions its ``requirements.txt`` names and what they require, ONNX Runtime included, and none of odir's code
but the copy the model carries.

The virtualenv is made without pip and without the network: each distribution of that closure is linked in from
this environment by the top-level names of its installed files (its ``RECORD``). A namespace folder that several
distributions share (``nvidia/``) comes in whole, so the environment can hold a little more than the closure, never
less; odir itself (an editable install here) is not in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from packaging.requirements import Requirement

from steps.support import integrity
from steps.support.predict import load_ensemble
from tests.conftest import one_member_ensemble


@pytest.fixture(scope="module")
def model_uri(odir_home: Path, tiny_data: Path, tiny_profile: Path) -> str:
    return one_member_ensemble(tiny_data, tiny_profile)


def _closure(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions that ``requirements`` name, and those they require, by normalised name."""
    found: dict[str, metadata.Distribution] = {}
    pending = [(Requirement(line), ()) for line in requirements]
    while pending:
        requirement, extras = pending.pop()
        if requirement.marker is not None and not any(
            requirement.marker.evaluate({"extra": extra}) for extra in (*extras, "")
        ):
            continue
        name = requirement.name.lower().replace("_", "-")
        if name in found:
            continue
        found[name] = metadata.distribution(requirement.name)
        pending += [(Requirement(line), tuple(requirement.extras)) for line in found[name].requires or []]
    return found


def _fresh_virtualenv(folder: Path, distributions: dict[str, metadata.Distribution]) -> Path:
    """A virtualenv under ``folder`` with these distributions linked in; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    [site] = list(folder.glob("lib/python*/site-packages"))
    for name, distribution in distributions.items():
        assert distribution.files is not None, f"{name} has no RECORD: it cannot be linked"
        root = Path(distribution.locate_file(""))
        tops = {file.parts[0] for file in distribution.files if file.parts[0] not in ("..", "__pycache__")}
        for top in tops:
            if (root / top).exists() and not (site / top).exists():
                (site / top).symlink_to(root / top)
    return folder / "bin" / "python"


def test_the_registered_ensemble_predicts_in_a_virtualenv_of_its_own_requirements(
    model_uri: str, tiny_data: Path, tmp_path: Path
) -> None:
    model_dir = integrity.verified_model_dir(model_uri)
    requirements = [
        line for line in (model_dir / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert any(line.startswith("onnxruntime==") for line in requirements), requirements
    python = _fresh_virtualenv(tmp_path / "venv", _closure(requirements))
    images = sorted((tiny_data / "images" / "offsite_test").iterdir())[:3]
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "inner = model.unwrap_python_model()\n"
        "import components, onnxruntime\n"
        "frame = model.predict(pd.DataFrame({'image_path': sys.argv[2:]}))\n"
        "print(json.dumps({'backend': inner.backend, 'components': components.__file__, "
        "'predictions': frame.to_dict(orient='list')}))\n"
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "ODIR_SERVE_IMAGE_ROOT": str(tiny_data)}
    done = subprocess.run([str(python), "-c", script, str(model_dir), *map(str, images)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == "onnxruntime"
    assert Path(result["components"]).is_relative_to(model_dir)  # the model's own copy of odir's code
    expected = load_ensemble(model_uri).predict_sources(list(map(str, images)))
    np.testing.assert_allclose(pd.DataFrame(result["predictions"])[["p_D", "p_G", "p_A"]].to_numpy(),
                               expected[["p_D", "p_G", "p_A"]].to_numpy(), atol=1e-6, rtol=0)  # fmt: skip
