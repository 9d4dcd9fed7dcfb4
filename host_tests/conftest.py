import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # the repo root: tools.*, firmware.*

from realer_harness import RunningCloud  # noqa: E402


@pytest.fixture(scope="session")
def _shared_cloud(tmp_path_factory):
    cloud = RunningCloud(tmp_path_factory.mktemp("realer"))
    yield cloud
    cloud.stop()


@pytest.fixture
def cloud(_shared_cloud):
    """The session's running cloud; fault knobs are cleared after each test."""
    yield _shared_cloud
    _shared_cloud.clear_faults()


@pytest.fixture
def fw(cloud, tmp_path):
    """fw(**kw) -> a Firmware (not started) with its own flash folder; fw(c, ...) for another
    cloud. Every one made is stopped after the test."""
    from firmware_harness import Firmware
    started = []

    def make(c=None, **kw):
        f = Firmware(c or cloud, tmp_path / ("flash%d" % len(started)), **kw)
        started.append(f)
        return f
    yield make
    for f in started:
        f.stop()


@pytest.fixture
def own_cloud(tmp_path):
    """A cloud of the test's own (for restarts, short lifetimes, signals)."""
    started = []

    def start(*extra):
        c = RunningCloud(tmp_path / ("realer%d" % len(started)), *extra)
        started.append(c)
        return c
    yield start
    for c in started:
        c.stop()


def pytest_sessionfinish(session, exitstatus):
    """The fault suite's figures (fault_report.record) into build/fault-report.{json,md}."""
    import fault_report
    path = fault_report.write()
    if path:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            "fault report: %s" % os.path.relpath(path, os.path.dirname(HERE)))
