"""Typed errors raised below the FUSE adapter.

Every error the filesystem raises on purpose is an ``FsError`` carrying the errno the
kernel should see.  ``s3fuse.fuse_ops`` is the one place that turns exceptions into
errno values; everything else raises these types (or lets unexpected exceptions fly,
which the adapter logs with a traceback and reports as EIO).
"""
import errno


class FsError(Exception):
    """An error with a definite errno."""

    errno = errno.EIO

    def __init__(self, message="", err=None):
        super().__init__(message)
        if err is not None:
            self.errno = err


class NotFound(FsError):
    errno = errno.ENOENT


class AccessDenied(FsError):
    errno = errno.EACCES


class NoSuchBucket(FsError):
    errno = errno.ENOENT


class ObjectChanged(FsError):
    """The object's ETag is no longer the one pinned at open (412 on If-Match)."""

    errno = errno.ESTALE


class Unreachable(FsError):
    """The endpoint did not answer (connection refused, DNS, timeouts) after retries."""

    errno = errno.EIO


class BackendError(FsError):
    """Any other S3 failure that survived the retries."""

    errno = errno.EIO


class UploadGone(FsError):
    """A multipart upload id the server no longer knows (NoSuchUpload)."""

    errno = errno.EIO


class NoCredentials(FsError):
    errno = errno.EACCES


class ConfigError(Exception):
    """A mount option or command-line argument that cannot work; message is user-facing."""
