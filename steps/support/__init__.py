"""What the steps share and no step owns: MLflow tracking, registry locks, file integrity, object storage, the
step base (reuse and code fingerprints), the step CLI, the registered ensemble's pyfunc, and the formats steps hand
each other (no step imports another step), one module per format so that each step imports, and its code
fingerprint covers, only the formats it uses:

- :mod:`~steps.support.manifest`: the manifest, its cross-validation folds, a folder of images;
- :mod:`~steps.support.predictions`: a predictions CSV; :mod:`~steps.support.thresholds`: ``thresholds.json``;
- :mod:`~steps.support.members`: a member version's checkpoints; :mod:`~steps.support.predict`: running a registered
  model (member or ensemble) and loading its networks for Grad-CAM;
- :mod:`~steps.support.tags`: the train run's tags, the evaluate run's key, a version's scores;
- :mod:`~steps.support.drift_reference`: the drift reference an ensemble version carries.
"""
