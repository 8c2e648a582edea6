"""Logging setup: a log file (reopened on SIGHUP for logrotate), syslog when daemonized,
or stderr in the foreground."""
from __future__ import annotations

import logging
import logging.handlers
import os

_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"


def setup(log_file=None, level="warning", foreground=False, debug=False):
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if log_file:
        handler = logging.handlers.WatchedFileHandler(log_file)
        os.chmod(log_file, 0o600)
        handler.setFormatter(logging.Formatter(_FORMAT))
    elif foreground or debug:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler("/dev/log")
        handler.setFormatter(logging.Formatter("s3fuse[%(process)d]: %(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.NullHandler()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else getattr(logging, level.upper()))
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "mfusepy", "fuse"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


def reopen():
    """SIGHUP: WatchedFileHandler reopens by itself when the file moved; force it anyway."""
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.acquire()
            try:
                if h.stream:
                    h.stream.close()
                h.stream = h._open()
            finally:
                h.release()
