"""The table of commands (``commandline.Command`` rows) and the ``--help`` text made from
it; the man page (``manpage.py``) renders the same rows."""
from __future__ import annotations

import textwrap

from ..config import options_help
from .commandline import Command, Flag, seconds, text

MOUNT = Command(
    "", ("BUCKET[:/PREFIX]", "MOUNTPOINT"), required=2, mount_options=True,
    help="mount the bucket (or a prefix of it) on MOUNTPOINT",
    flags=(Flag("-f", "foreground", help="stay in the foreground (log to stderr)"),
           Flag("-d", "debug", help="debug: foreground, verbose logs, libfuse debug output"),
           Flag("-h", "help", help="this help", aliases=("--help",)),
           Flag("--version", "version", help="print the version")),
    ignored=("-s", "-n", "-v", "--"))       # mount(8) helper flags: sloppy, no mtab, verbose

COMMANDS = {
    "status": Command("status", ("MOUNTPOINT",), required=0,
                      help="live uploads (progress, rate, ETA), cache, requests, metrics endpoint; "
                           "without MOUNTPOINT every s3fuse mount of the host",
                      flags=(Flag("--json", "json", help="print the status as JSON"),)),
    "sync": Command("sync", ("MOUNTPOINT",), required=1,
                    help="wait until every file closed on the mount is uploaded (-o writeback)"),
    "resume": Command("resume", ("BUCKET[:/PREFIX]",), required=1, mount_options=True,
                      help="finish a crashed mount's uploads without mounting"),
    "uploads": Command("uploads", ("BUCKET[:/PREFIX]",), required=1, mount_options=True,
                       help="list (and abort) stale multipart uploads under the prefix",
                       flags=(Flag("--abort", "abort", help="abort them"),
                              Flag("--older-than", "older_than", seconds, "only uploads started that long ago",
                                   metavar="SECONDS"),
                              Flag("--force", "force", help="abort resumable uploads of this cache_dir too"))),
    "versions": Command("versions", ("PATH",), required=1,
                        help="list the versions of a file on a mount of a versioned bucket (version id, time, "
                             "size, delete markers); --restore makes one the file's content again (a "
                             "server-side copy); a deleted file is reached by its old path",
                        flags=(Flag("--restore", "restore", text, "restore this version", metavar="VERSION_ID"),
                               Flag("--json", "json", help="print the versions as JSON"))),
    "demo": Command("demo", ("MOUNTPOINT",), required=0,
                    help="start a local S3 server (moto) with a demo bucket and mount it"),
    "install-helper": Command(
        "install-helper", (), required=0,
        help="write the mount(8) helpers /sbin/mount.s3fuse and /sbin/mount.fuse.s3fuse (they run this Python "
             "and this s3fuse) and the man page /usr/local/share/man/man8/mount.s3fuse.8",
        flags=(Flag("--sbin-dir", "sbin_dir", text, metavar="DIR"),
               Flag("--man-dir", "man_dir", text, metavar="DIR"),
               Flag("--no-man", "no_man"))),
    "man": Command("man", (), required=0, help="print the man page as roff (man -l FILE shows it)",
                   flags=(Flag("--output", "output", text, metavar="FILE"),)),
}

# (flag, text) and (synopsis, text) rows, as --help and the man page list them.
FLAGS = [("-o OPTIONS", "comma-separated mount options (below)")] + \
        [(", ".join((f.name,) + f.aliases), f.help) for f in MOUNT.flags]
SYNOPSES = [(c.synopsis(), c.help) for c in COMMANDS.values()]


def _usage_text() -> str:
    lines = ["usage: mount.s3fuse BUCKET[:/PREFIX] MOUNTPOINT [-o OPT[,OPT...]] [-f] [-d]",
             "       s3fuse BUCKET[:/PREFIX] MOUNTPOINT [...]     (same as mount.s3fuse)"]
    for synopsis, help_text in SYNOPSES:
        lines.append(f"       s3fuse {synopsis}")
        lines += textwrap.wrap(help_text, 88, initial_indent=" " * 11, subsequent_indent=" " * 11)
    lines += ["", "Mount an S3 bucket (or a prefix of it) as a filesystem.  Credentials come from",
              "-o passwd_file=, -o profile=, or the standard AWS chain (AWS_ACCESS_KEY_ID/...",
              "environment variables, ~/.aws files, instance role).  man mount.s3fuse has it all.", ""]
    lines += [f"  {flag:<13} {help_text}" for flag, help_text in FLAGS]
    return "\n".join(lines + ["", "Mount options:"]) + "\n"


def usage() -> str:
    return _usage_text() + options_help() + "\n"
