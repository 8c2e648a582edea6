"""The mount.s3fuse(8) man page, rendered as roff from the tables ``--help`` prints:
the mount options (``config.OPTIONS``, ``config.IGNORED``), the flags and commands
(``usage.FLAGS``, ``usage.SYNOPSES``) and the metric names (``metrics.REGISTRY``), so the
page cannot drift from the code.  ``s3fuse man`` prints it; ``s3fuse install-helper``
installs it (``man8/mount.s3fuse.8``)."""
from __future__ import annotations

import datetime

from .. import __version__, metrics
from ..config import IGNORED, OPTIONS

SECTION = "8"


def esc(text: str) -> str:
    """Text for a roff line: backslashes escaped, hyphens as minus signs, a leading dot
    or quote protected."""
    text = str(text).replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def _bold(text: str) -> str:
    return f"\\fB{esc(text)}\\fR"


def _para(*lines) -> list:
    return [".PP"] + [esc(line) for line in lines]


def _tagged(tag: str, *body) -> list:
    return [".TP", tag] + [esc(line) for line in body]


def _example(*lines) -> list:
    return [".PP", ".RS 4", ".nf"] + [esc(line) for line in lines] + [".fi", ".RE"]


def _option_tag(name: str, parser) -> str:
    return _bold(name) if parser is None else f"{_bold(name)}=\\fIVALUE\\fR"


def render(date: str = "") -> str:
    from .usage import FLAGS, SYNOPSES
    date = date or datetime.date.today().isoformat()
    out = [f'.TH MOUNT.S3FUSE {SECTION} "{date}" "s3fuse {esc(__version__)}" "System Administration"',
           ".nh", ".ad l",
           ".SH NAME", "mount.s3fuse, s3fuse \\- mount an S3 bucket as a filesystem",
           ".SH SYNOPSIS",
           f"{_bold('mount.s3fuse')} \\fIBUCKET\\fR[:/\\fIPREFIX\\fR] \\fIMOUNTPOINT\\fR "
           f"[{_bold('-o')} \\fIOPTION\\fR[,\\fIOPTION\\fR...]] [{_bold('-f')}] [{_bold('-d')}]",
           ".br",
           f"{_bold('mount -t fuse.s3fuse')} \\fIBUCKET\\fR \\fIMOUNTPOINT\\fR [{_bold('-o')} \\fIOPTIONS\\fR]",
           ".br",
           f"{_bold('s3fuse')} \\fICOMMAND\\fR [\\fIARGUMENTS\\fR]"]
    out += [".SH DESCRIPTION"]
    out += _para("mount.s3fuse mounts an S3 bucket (AWS S3, Ceph RGW, MinIO or any S3-compatible server), or a",
                 "prefix of it, so that ordinary tools work on it. Listings come from ListObjectsV2, reads go",
                 "through a block cache on disk keyed by ETag, and close() returns once the object is in the",
                 "bucket; every upload is journaled, so one interrupted by a crash or an outage is finished by",
                 "the mount later, by the next mount, or by s3fuse resume.")
    out += _para("mount.s3fuse daemonizes and exits 0 once the mount is live. A mount that cannot work (no",
                 "such bucket, bad credentials, an unreachable endpoint, a missing or busy mountpoint, a bad",
                 "option) exits non-zero within seconds with one line saying why, and leaves no mount behind.",
                 "Credentials come from -o passwd_file=, -o profile=, or the standard AWS chain",
                 "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws files, credential_process, SSO,",
                 "AWS_WEB_IDENTITY_TOKEN_FILE, AWS_CONTAINER_CREDENTIALS_FULL_URI, the instance role);",
                 "temporary credentials are renewed for the life of the mount. Credentials the server",
                 "refuses, or a source that cannot renew them, give EACCES and one log line.",
                 "Unmount with umount(8) or fusermount3 -u; unmounting waits for uploads in progress.")
    out += _para("A daemonized mount heals itself (-o heal, on by default): a small supervisor process",
                 "(the one mount.s3fuse leaves behind) watches the process serving the mount; when that",
                 "process dies (SIGKILL, an OOM kill, a crash) it logs the cause, detaches the dead",
                 "connection and mounts again on the same mountpoint with the same options and cache_dir,",
                 "whose journal finishes the uploads close() had started. Descriptors opened before the death",
                 "fail with ENOTCONN (ECONNABORTED for a call in progress); new opens work. Restarts wait 0,",
                 "1, 2, 4... s; more than heal_limit deaths within 60 s leave the mount down. umount, or",
                 "SIGTERM to either process, ends both. Not with -f; s3fuse status shows the restarts.")
    out += [".SH OPTIONS"]
    for flag, text in FLAGS:
        out += _tagged(_bold(flag), text)
    out += [".SS Mount options (\\-o)"]
    out += _para("Given as -o name=value or -o flag, comma-separated, or in the options field of fstab(5).",
                 "Sizes take K, M, G, T suffixes (powers of 1024).")
    for name, (_, parser, text) in OPTIONS.items():
        out += _tagged(_option_tag(name, parser), text)
    out += _para("Accepted and ignored (meant for mount(8), systemd or the kernel): "
                 + ", ".join(sorted(IGNORED)) + ", x-systemd.*, x-*, comment=. Any other option is an error",
                 "that names it.")
    out += [".SH COMMANDS"]
    for synopsis, text in SYNOPSES:
        out += _tagged(_bold("s3fuse " + synopsis.split(" ", 1)[0]) + " " + esc(synopsis.partition(" ")[2]), text)
    out += [".SH FSTAB"]
    out += _para("mount(8) runs /sbin/mount.s3fuse for the type s3fuse, and /sbin/mount.fuse.s3fuse for",
                 "fuse.s3fuse (both written by s3fuse install-helper). _netdev orders the mount after the",
                 "network, nofail keeps a missing bucket from stopping the boot:")
    out += _example("# /etc/fstab",
                    "my-bucket  /mnt/s3  fuse.s3fuse  _netdev,nofail,allow_other,region=eu-west-1,"
                    "passwd_file=/etc/passwd-s3fuse  0 0",
                    "backups:/daily  /srv/backups  s3fuse  _netdev,nofail,endpoint=https://rgw.example.net,"
                    "passwd_file=/etc/passwd-s3fuse,metrics=9101  0 0")
    out += _para("then mount /mnt/s3 (or mount -a). /etc/passwd-s3fuse holds ACCESS_KEY:SECRET_KEY (or",
                 "BUCKET:ACCESS_KEY:SECRET_KEY lines) and must be mode 0600.")
    out += [".SH SYSTEMD"]
    out += _para("systemd turns the fstab line into a mount unit by itself. Written by hand, the unit's",
                 "name must match the mountpoint (/mnt/s3 is mnt-s3.mount):")
    out += _example("[Unit]", "Description=S3 bucket my-bucket on /mnt/s3", "Wants=network-online.target",
                    "After=network-online.target", "", "[Mount]", "What=my-bucket", "Where=/mnt/s3",
                    "Type=fuse.s3fuse", "Options=_netdev,allow_other,passwd_file=/etc/passwd-s3fuse",
                    "# unmounting waits for uploads in progress", "TimeoutSec=300", "", "[Install]",
                    "WantedBy=remote-fs.target")
    out += _para("Add x-systemd.automount to the fstab options (or a mnt-s3.automount unit) to mount on",
                 "first access.")
    out += [".SH SNAPSHOTS AND VERSIONS"]
    out += _para("-o snapshot=TIME mounts a versioned bucket read-only as it stood at TIME (ISO 8601 such as",
                 "2026-12-01T10:00:00Z, or Unix seconds): for each key its newest version up to TIME, none",
                 "where a delete marker is that newest entry; directories come from the keys that remain.",
                 "Data and attributes are those of that version (GetObject and HEAD with its VersionId), and",
                 "the block cache is keyed by version. Every change answers EROFS. A bucket whose versioning",
                 "was never enabled fails the mount at once with one line (exit 1); a TIME that cannot be read",
                 "or lies in the future is a usage error (exit 2).")
    out += _para("Cost: ListObjectVersions cannot skip later versions or deleted keys, so listing a",
                 "directory pages through every version of every key below it, subdirectories included",
                 "(1,000 per request); listing the root pages through the bucket's whole history.")
    out += _para("s3fuse versions PATH lists the versions of a file on a mount (a deleted file by its old",
                 "path); s3fuse versions --restore VERSION_ID PATH copies that version over the file on the",
                 "server (a new version; the old ones stay) and the mount shows it at once. Both go through",
                 "the mount by the reserved extended attributes user.s3fuse.versions and user.s3fuse.restore.")
    out += [".SH METRICS"]
    out += _para("With -o metrics=[ADDR:]PORT the daemon serves Prometheus text format at",
                 "http://ADDR:PORT/metrics (ADDR is 127.0.0.1 unless given: 0.0.0.0:9101 listens on every",
                 "interface; port 0 picks a free port, which s3fuse status shows). No credentials are ever",
                 "part of it. The metrics:")
    for name, kind, help in metrics.REGISTRY.names():
        out += _tagged(f"{_bold(name)} ({esc(kind)})", help)
    out += [".SH LOGGING"]
    out += _para("The log goes to syslog, to -o log_file= (reopened on SIGHUP and when moved, for",
                 "logrotate), or to stderr with -f. A failure is one line: the path, the S3 operation, its",
                 "status (the HTTP status, or unreachable/timeout) and attempts, and what s3fuse did about it:")
    out += _example("WARNING s3fuse.retry: S3 PutObject failed (status 503, 1 attempt): put 'a/b': 503 SlowDown;"
                    " retrying in 0.4 s (attempt 2 of 5)",
                    "ERROR s3fuse.fuse_ops: flush '/a/b' failed: S3 PutObject failed (status unreachable, "
                    "5 attempts): PUT 'a/b': timed out; EIO returned, upload kept in the journal for resume "
                    "(retried every 30 s, and by the next mount)")
    out += _para("With log_level=info each finished upload adds one line: key, size, parts, seconds, MiB/s.",
                 "Tracebacks are logged at debug level only, except for a bug (\"failed unexpectedly\").")
    out += [".SH EXIT STATUS"]
    out += _tagged(_bold("0"), "mounted (the mount is live), or the command succeeded")
    out += _tagged(_bold("1"), "the mount could not be made (bucket, credentials, endpoint, FUSE), or some "
                               "uploads of s3fuse resume failed, or s3fuse status found no mount there")
    out += _tagged(_bold("2"), "usage: a bad argument or option, a mountpoint that does not exist or is "
                               "already mounted, a cache_dir that is not writable, a refused passwd_file")
    out += [".SH FILES"]
    for path, text in (
            ("/sbin/mount.s3fuse, /sbin/mount.fuse.s3fuse", "the mount(8) helpers"),
            ("/var/cache/s3fuse (root), ~/.cache/s3fuse", "the default cache_dir: blocks/ (block cache), "
             "meta/ (metadata learnt by HEAD), staging/ (files being written), journal/ (uploads not yet "
             "in the bucket), recovery/ (unfinished writes kept after a crash); one mount per cache_dir"),
            ("/run/s3fuse/*.json (root), $XDG_RUNTIME_DIR/s3fuse/*.json",
             "the live status of each mount, read by s3fuse status"),
            ("/etc/passwd-s3fuse", "credentials for -o passwd_file= (mode 0600)")):
        out += _tagged(_bold(path), text)
    out += [".SH SEMANTICS"]
    for point in (
            "A key is a path: a/b/c makes a and a/b directories; mkdir writes a dir/ marker. POSIX "
            "attributes are s3fs-fuse's x-amz-meta-mode/uid/gid/mtime headers.",
            "Close-to-open consistency: what close() or fsync() accepted is in the bucket when it returns, "
            "or it failed with the errno (EIO) and the upload stays in the journal. Reads see the object "
            "as it was at open (its ETag is pinned; a change on the server gives ESTALE).",
            "Renaming a directory copies and deletes each object below it: not atomic (a crash midway is "
            "finished by the next mount). Hard links are server-side copies (hardlinks=copy) or EPERM.",
            "No locks across clients; other writers' changes show once the attribute and listing TTLs "
            "expire.",
            "docs/SEMANTICS.md in the source tree has the whole account."):
        out += _tagged("\\(bu", point)
    out += [".SH SEE ALSO", "mount(8), umount(8), fstab(5), fusermount3(1), systemd.mount(5)"]
    return "\n".join(out) + "\n"
