"""Figures lines in the test report."""
from __future__ import annotations


def report(config, line: str):
    """Print a figures line in the test report (visible without -s)."""
    tr = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if tr is None or capman is None:      # pragma: no cover
        print(line)
        return
    with capman.global_and_fixture_disabled():     # past pytest's output capture
        tr.write_line("")
        tr.write_line(line)
