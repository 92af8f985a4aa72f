"""Flow runs that odir starts in its own process send no Prefect heartbeats, unless the user asks for them."""

from __future__ import annotations

import pytest
from prefect.settings import get_current_settings

from flows import without_heartbeats


def test_odir_runs_in_process_without_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    before = get_current_settings().flows.heartbeat_frequency
    with without_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency is None  # what the flow engine reads at start
    assert get_current_settings().flows.heartbeat_frequency == before == 180  # Prefect's default, restored


def test_a_heartbeat_frequency_the_user_set_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
    before = get_current_settings().flows.heartbeat_frequency
    with without_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency == before is not None
