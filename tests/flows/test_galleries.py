"""Which of the pipeline's evaluations log figures and a Grad-CAM gallery: the ensemble's, and the members' only when
the profile asks (``member_figures``); neither setting changes the profile's key."""

from __future__ import annotations

from components.config import Profile
from flows.odir import PipelineRun, profile_key

MODELS = [{"name": "a", "backbone": "tiny_cnn"}]


def _run(**settings) -> PipelineRun:
    return PipelineRun(Profile(name="p", models=MODELS, **settings), {}, "local")


def test_only_the_ensembles_evaluations_log_figures_and_a_gallery_by_default() -> None:
    assert (_run().gallery(member=False), _run().gallery(member=True)) == (4, 0)
    assert (_run().figures(member=False), _run().figures(member=True)) == (True, False)
    assert (_run(gradcam_gallery=2).gallery(member=False), _run(gradcam_gallery=0).gallery(member=False)) == (2, 0)


def test_member_figures_log_them_and_a_gallery_for_each_member_too() -> None:
    run = _run(member_figures=True, gradcam_gallery=3)
    assert (run.gallery(member=False), run.gallery(member=True)) == (3, 3)
    assert (run.figures(member=False), run.figures(member=True)) == (True, True)


def test_the_gallery_settings_leave_the_profile_key_alone() -> None:
    keys = {profile_key(_run(**s).profile) for s in ({}, {"member_figures": True}, {"gradcam_gallery": 0})}
    assert len(keys) == 1
