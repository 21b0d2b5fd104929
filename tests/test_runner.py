"""server/runner.py: the runner that serves the app tunes the garbage collector once the app has started, and puts
it back when the app stops; an app under test (not served by `runner_for`) keeps CPython's defaults."""

from __future__ import annotations

import gc

from tests.conftest import drop_test_data, make_settings
from tidings.server.app import create_app
from tidings.server.runner import GC_THRESHOLDS, runner_for


async def test_a_served_app_freezes_its_start_up_heap_and_collects_less_often() -> None:
    settings = make_settings()
    before = gc.get_threshold()
    assert before != GC_THRESHOLDS
    runner = runner_for(create_app(settings))
    try:
        await runner.setup()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 10_000  # modules, models and the app's services
    finally:
        await runner.cleanup()
        await drop_test_data(settings)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
