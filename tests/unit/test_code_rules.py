"""Rules of the code base that a reader relies on (docs/design/core.md), checked."""
from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys

import pytest

from s3fuse.s3 import ObjectClient

from ..support.fakes import FakeS3
from ..support.mounts import REPO

PACKAGE = os.path.join(REPO, "s3fuse")


def modules():
    for root, _, names in os.walk(PACKAGE):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                yield os.path.relpath(path, PACKAGE), open(path, encoding="utf-8").read()


def test_pyflakes_finds_nothing():
    pytest.importorskip("pyflakes")
    out = subprocess.run([sys.executable, "-m", "pyflakes", PACKAGE], capture_output=True, text=True)
    assert out.stdout == "" and out.returncode == 0, out.stdout


def test_modules_stay_small():
    big = {name: text.count("\n") for name, text in modules() if text.count("\n") > 450}
    assert big == {}, "split these: one job per module"


def test_errno_values_are_chosen_in_one_table():
    """Code raises error kinds; only errors.py maps them to errno values."""
    users = [name for name, text in modules() if re.search(r"\berrno\.E[A-Z]+", text) and name != "errors.py"]
    assert users == []


def test_fake_client_has_the_object_client_interface():
    """The unit tests' FakeS3 stands in for ObjectClient: every method the code can call
    exists on both with the same parameters (names and defaults)."""
    public = {n for n, f in inspect.getmembers(ObjectClient, inspect.isfunction) if not n.startswith("_")}
    public -= {"probe", "create_bucket"}      # mount time and the demo only, never below Filesystem
    missing = sorted(n for n in public if not hasattr(FakeS3, n))
    assert missing == []
    for name in sorted(public):
        real = inspect.signature(getattr(ObjectClient, name)).parameters
        fake = inspect.signature(getattr(FakeS3, name)).parameters
        assert [(p.name, p.default) for p in real.values()] == [(p.name, p.default) for p in fake.values()], name
