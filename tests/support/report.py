"""Figures lines in the test report (counts of faults injected, crashes survived, ...).

Serially they are written straight to the terminal, past pytest's output capture.  A
pytest-xdist worker's terminal is not shown: a worker appends its lines to a file the
controller named (``figures_file``), and the controller prints them at the end
(``collected_figures``, from conftest's ``pytest_terminal_summary``)."""
from __future__ import annotations

import os
import tempfile


def report(config, line: str):
    """Print a figures line in the test report (visible without -s)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and workerinput.get("s3fuse_figures"):
        with open(workerinput["s3fuse_figures"], "a") as f:
            f.write(f"[{workerinput.get('workerid', '?')}] {line}\n")
        return
    tr = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if tr is None or capman is None:      # pragma: no cover
        print(line)
        return
    with capman.global_and_fixture_disabled():     # past pytest's output capture
        tr.write_line("")
        tr.write_line(line)


def figures_file(config) -> str:
    """The controller's file for the workers' figures lines (made on first use)."""
    path = getattr(config, "_s3fuse_figures", None)
    if path is None:
        fd, path = tempfile.mkstemp(prefix="s3fuse-figures-", suffix=".txt")
        os.close(fd)
        config._s3fuse_figures = path
    return path


def collected_figures(config) -> list:
    """The lines workers wrote to ``figures_file`` (removed once read); [] serially."""
    path = getattr(config, "_s3fuse_figures", None)
    if path is None:
        return []
    try:
        with open(path) as f:
            return f.read().splitlines()
    finally:
        os.unlink(path)
