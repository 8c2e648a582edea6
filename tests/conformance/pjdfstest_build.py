"""Build pjdfstest from ../shared/tools (never copied into the project) into a cache
directory outside the repository, once per tarball checksum and patch version; see
run_pjdfstest.py for what the patch changes."""
from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO.parent / "shared" / "tools"           # ../shared/tools from the project root
TARBALL_GLOB = "pjdfstest-*.tar.gz"

# tools the build and the run need, and the Debian package of each
REQUIRED_TOOLS = {"autoreconf": "autoconf", "aclocal": "automake", "automake": "automake",
                  "cc": "gcc", "make": "make", "prove": "perl", "openssl": "openssl", "bash": "bash"}

# Linux settings of pjdfstest's tests/conf (its own detection, plus an override).
CONF = """\
# pjdfstest configuration (written by s3fuse tests/conformance/run_pjdfstest.py):
# upstream's Linux settings. PJDFSTEST_FS overrides the detected file system type.
os=`uname`
GREP=grep
fs="${PJDFSTEST_FS:-`df -PT . | tail -1 | awk '{print toupper($2)}'`}"
if [ -z "${fs}" ]; then
	echo "Cannot figure out file system type, define it by hand." >/dev/stderr
	exit 1
fi
"""

# Added to misc.sh: under bash, the line of the .t file that made the check (in _pjd_at).
WHERE_FN = r"""
_pjd_where()
{
	_pjd_at=""
	if [ -n "${BASH_VERSION}" ]; then
		eval '_i=1; while [ ${_i} -lt ${#BASH_SOURCE[@]} ]; do
			if [ "${BASH_SOURCE[${_i}]}" = "$0" ]; then _pjd_at=" [line ${BASH_LINENO[$((_i-1))]}]"; break; fi
			_i=$((_i+1)); done'
	fi
}
"""


PATCH_VERSION = 3     # of _patch_tree(): part of the cache directory name


class PjdfstestError(RuntimeError):
    pass


def log_stderr(msg: str):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def find_tarball() -> Path:
    env = os.environ.get("S3FUSE_PJDFSTEST_TARBALL")
    if env:
        return Path(env)
    found = sorted(glob.glob(str(TOOLS_DIR / TARBALL_GLOB)))
    if not found:
        raise PjdfstestError(f"no {TARBALL_GLOB} in {TOOLS_DIR} (see its README.md)")
    return Path(found[-1])


def missing_tools() -> list:
    """['prove (perl)', ...]: what is not installed of the build and run tools."""
    return [f"{t} ({pkg})" for t, pkg in REQUIRED_TOOLS.items() if shutil.which(t) is None]


def default_cache_root() -> Path:
    env = os.environ.get("S3FUSE_PJDFSTEST_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "s3fuse-tests"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _function(text: str, name: str) -> tuple:
    start = text.index(f"\n{name}()\n{{\n") + 1
    end = text.index("\n}\n", start) + 3
    return start, end


def _patch_tree(src: Path):
    """tests/conf: the Linux settings; misc.sh: expect() and test_check() print what they
    tried and (under bash) the .t line on every subtest, ok or not. The checks themselves
    and the TAP numbering are unchanged."""
    (src / "tests" / "conf").write_text(CONF)
    misc = src / "tests" / "misc.sh"
    text = misc.read_text()
    edits = {
        "expect": [('echo "ok ${ntest}"', "_pjd_where; echo \"ok ${ntest} - tried '$*', expected ${e}${_pjd_at}\""),
                   ("echo \"not ok ${ntest} - tried '$*', expected ${e}, got ${r}\"",
                    "_pjd_where; echo \"not ok ${ntest} - tried '$*', expected ${e}, got ${r}${_pjd_at}\"")],
        "test_check": [('echo "ok ${ntest}"', '_pjd_where; echo "ok ${ntest} - test_check $*${_pjd_at}"'),
                       ('echo "not ok ${ntest}"\n', '_pjd_where; echo "not ok ${ntest} - test_check $*${_pjd_at}"\n')],
    }
    for fn, pairs in edits.items():
        start, end = _function(text, fn)
        body = text[start:end]
        for old, new in pairs:
            if body.count(old) != 1:
                raise PjdfstestError(f"{misc}: unexpected {fn}(), cannot add tracing")
            body = body.replace(old, new)
        text = text[:start] + body + text[end:]
    if "\nntest=1\n" not in text:
        raise PjdfstestError(f"{misc}: no ntest=1 line")
    text = text.replace("\nntest=1\n", "\nntest=1\n" + WHERE_FN, 1)
    misc.write_text(text)


def build_pjdfstest(tarball: Optional[Path] = None, cache_root: Optional[Path] = None,
                    log: Callable[[str], None] = log_stderr) -> Path:
    """Build pjdfstest (once per tarball checksum) and return its source directory, which
    holds the ``pjdfstest`` binary and ``tests/``."""
    tarball = Path(tarball or find_tarball()).resolve()
    root = Path(cache_root or default_cache_root()).resolve()
    if root == REPO or REPO in root.parents:
        raise PjdfstestError(f"cache directory {root} is inside the project; use one outside it")
    dest = root / f"pjdfstest-{_sha256(tarball)[:16]}-p{PATCH_VERSION}"
    if (dest / ".built").exists():
        return dest
    missing = missing_tools()
    if missing:
        raise PjdfstestError("cannot build pjdfstest, missing: " + ", ".join(missing))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)            # another session may be building it
        if (dest / ".built").exists():
            return dest
        t0 = time.monotonic()
        log(f"building pjdfstest from {tarball} in {dest}")
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            with tarfile.open(tarball) as tf:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(tmp, filter="data")
                else:
                    tf.extractall(tmp)
            src = tmp
            entries = list(tmp.iterdir())
            if not (tmp / "configure.ac").exists() and len(entries) == 1 and entries[0].is_dir():
                src = entries[0]
            build_log = src / "build.log"
            with open(build_log, "w") as out:
                for cmd in (["autoreconf", "-ifs"], ["./configure"], ["make", "pjdfstest"]):
                    p = subprocess.run(cmd, cwd=src, stdout=out, stderr=subprocess.STDOUT, timeout=900)
                    if p.returncode != 0:
                        raise PjdfstestError(f"{' '.join(cmd)} failed (exit {p.returncode}):\n"
                                             + build_log.read_text()[-3000:])
            _patch_tree(src)
            (src / ".built").write_text(f"{tarball}\n")
            if dest.exists():
                shutil.rmtree(dest)
            os.rename(src, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"built pjdfstest in {time.monotonic() - t0:.1f} s")
    return dest
