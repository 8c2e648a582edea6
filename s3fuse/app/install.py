"""``s3fuse install-helper``: what ``pip install`` cannot put in place by itself.

- ``SBIN/mount.s3fuse``: mount(8) runs ``/sbin/mount.TYPE`` for fstab type ``s3fuse``
  (and ``mount.fuse.TYPE`` for ``fuse.s3fuse``, a symlink here) with an empty
  environment, no PATH and no HOME: so the helper names its interpreter (this Python)
  and, when s3fuse is not in that interpreter's site-packages (a source checkout, a
  --user install), the directory it is imported from.
- ``MANDIR/man8/mount.s3fuse.8``: the man page (``manpage.render``).

Every file is written next to its target and renamed over it, so a mount starting
meanwhile never runs half a helper.
"""
from __future__ import annotations

import os
import site
import sys
from typing import Optional

HELPER = "mount.s3fuse"
FUSE_HELPER = "mount.fuse.s3fuse"


def helper_text(python: Optional[str] = None) -> str:
    python = python or sys.executable
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # holds s3fuse/
    system_dirs = {os.path.realpath(p) for p in site.getsitepackages()}
    pin = "" if os.path.realpath(here) in system_dirs else f"sys.path.insert(0, {here!r})\n"
    return (f"#!{python}\n"
            '"""mount(8) helper for s3fuse (written by `s3fuse install-helper`):\n'
            'mount.s3fuse BUCKET[:/PREFIX] MOUNTPOINT [-o OPTIONS] [-f] [-d]."""\n'
            "import sys\n"
            f"{pin}"
            "from s3fuse.cli import main\n"
            "sys.exit(main())\n")


def _replace(path: str, write):
    tmp = f"{path}.new-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def install(sbin_dir: str = "/sbin", man_dir: Optional[str] = "/usr/local/share/man") -> list:
    """Write the helpers into ``sbin_dir`` and the man page below ``man_dir`` (None: no
    man page).  Returns the paths written."""
    written = []
    os.makedirs(sbin_dir, exist_ok=True)
    helper = os.path.join(sbin_dir, HELPER)

    def write_helper(tmp):
        with open(tmp, "w") as f:
            f.write(helper_text())
        os.chmod(tmp, 0o755)
    _replace(helper, write_helper)
    written.append(helper)
    _replace(os.path.join(sbin_dir, FUSE_HELPER), lambda tmp: os.symlink(HELPER, tmp))
    written.append(os.path.join(sbin_dir, FUSE_HELPER))
    if man_dir:
        from .manpage import SECTION, render
        target_dir = os.path.join(man_dir, f"man{SECTION}")
        os.makedirs(target_dir, exist_ok=True)
        page = os.path.join(target_dir, f"{HELPER}.{SECTION}")

        def write_page(tmp):
            with open(tmp, "w") as f:
                f.write(render())
            os.chmod(tmp, 0o644)
        _replace(page, write_page)
        written.append(page)
    return written
