"""Where an ensemble registered before the steps' support modules moved to :mod:`steps.support` finds its class:
its pickle names ``steps.ensemble_model.OdirEnsemble``. New versions name :mod:`steps.support.ensemble_model`."""

from steps.support.ensemble_model import OdirEnsemble  # noqa: F401
