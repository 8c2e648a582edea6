"""Error kinds raised below the FUSE adapter, and THE table that gives each its errno.

Code below ``s3fuse.fuse`` never picks an errno: it raises a named kind (``NotFound``,
``NotEmpty``, ``ReadOnly``...).  ``ERRNO`` below is the one place that says what the
kernel sees for each kind; ``s3fuse.fuse.boundary`` is the one place that turns an
exception into that errno (and logs it).  A kind not in the table inherits its parent's
entry.

Kinds that come from S3 (``Unreachable``, ``ServerBusy``, ``BackendError``...) are made
by the ``s3fuse.s3`` package (the layers above pass them on or wrap them, e.g. as a
part's failure); ``Transient`` marks those worth another attempt (the retry layer,
``s3fuse.s3.retry``, is the only code that looks at it).
"""
import errno as _errno


class FsError(Exception):
    """Base of every error with a definite errno (see ``ERRNO``).

    An error that comes from an S3 request also says which request it was and how it
    ended, for the one log line that reports it (``describe``): ``s3_op`` (S3's name,
    "PutObject"), ``status`` (the HTTP status, or "unreachable"/"timeout" when no answer
    came) and ``attempts`` (how many the retry layer made).  ``action`` is what s3fuse
    did with the data besides answering (e.g. "upload kept in the journal for resume")."""

    s3_op = None
    status = None
    attempts = 0
    action = None
    hint = None          # what the user can do about it, for the one line (``describe``)

    @property
    def errno(self) -> int:
        return errno_of(self)


# -- POSIX answers ---------------------------------------------------------------------
class NotFound(FsError):
    """No such file or directory."""


class Exists(FsError):
    """The name is taken."""


class NotEmpty(FsError):
    """rmdir (or rename onto) a directory that still has entries."""


class IsADirectory(FsError):
    pass


class NotADirectory(FsError):
    pass


class ReadOnly(FsError):
    """A change on a read-only mount."""


class NameTooLong(FsError):
    """A name over 255 bytes or a key over S3's 1,024."""


class InvalidArgument(FsError):
    pass


class NotUtf8Name(InvalidArgument):
    """A name that is not UTF-8: S3 keys are UTF-8, so no object can carry it."""


class NotPermitted(FsError):
    """An operation this filesystem refuses by design (hard link of a directory, ...)."""


class Busy(FsError):
    """The mount root cannot be removed or renamed."""


class BadHandle(FsError):
    """A file handle that is unknown or not open for the operation."""


class NoSuchAttribute(FsError):
    """No extended attribute of that name."""


class NotSupported(FsError):
    """An extended attribute namespace that is never stored, a rename flag S3 cannot honour."""


class NeverCompletes(FsError):
    """An upload that can never complete as recorded (its record is abandoned: the
    staging file goes to ``recovery/``).  A marker: each kind keeps its own errno."""


class TooLarge(NeverCompletes):
    """Beyond what S3 can hold (10,000 parts, EntityTooLarge)."""


class MetadataTooLarge(TooLarge):
    """User metadata over S3's 2 KiB (an extended attribute too long to store)."""


class Stale(FsError):
    """The kernel knows a name or an object version S3 no longer has."""


class ObjectChanged(Stale):
    """The object's ETag is no longer the one pinned at open (412 on If-Match, or 404)."""


class SourceChanged(ObjectChanged, NeverCompletes):
    """An edit in place can never complete: the old version its untouched parts are
    copied from is gone from the server (another client overwrote or deleted the key)."""


class WriteFailed(FsError):
    """A local write to the staging file failed earlier; the file is never uploaded.
    Carries the errno of that failure (ENOSPC, EDQUOT...), else EIO."""

    def __init__(self, message: str = "", local_errno: int = 0):
        super().__init__(message)
        self.local_errno = local_errno


class ShortWrite(FsError):
    """A write to the cache disk that wrote nothing and reported no error."""


class StagingReleased(FsError):
    """A change (write, truncate) of bytes of a file being written that were already
    uploaded and released from the full staging disk (``write/release.py``): the file
    can no longer be uploaded as written (ENOSPC: the disk was full)."""


class ReleasedRead(FsError):
    """A read of bytes of a file being written that were uploaded and released from the
    full staging disk: they are readable again once the file is closed (in the bucket)."""


# -- S3 answers (made by the s3fuse.s3 package) --------------------------------------------
class AccessDenied(FsError):
    """403 and its kin.  ``server_time``: the server's clock when it answered (its Date),
    0 if unknown - a refusal may be the local clock's fault (SigV4 allows 15 minutes)."""

    server_time = 0.0


class NoCredentials(AccessDenied):
    pass


class ClockSkewed(AccessDenied):
    """The server refused the request's time (RequestTimeTooSkewed): the local clock is
    too far from the server's, and the correction learnt from its answer did not help."""

    hint = "the server refused the request time: check the local clock (NTP)"


class CredentialsRefused(AccessDenied):
    """The server refuses the request's credentials themselves (InvalidAccessKeyId,
    SignatureDoesNotMatch, InvalidToken): a key revoked or rotated away.  Reported in one
    line per access key by ``s3fuse.s3.chain`` (quiet here: not one line per request)."""

    hint = "the server refuses the credentials: renew or fix them"


class CredentialsExpired(CredentialsRefused):
    """Temporary credentials whose session token has expired (ExpiredToken) and that
    their source could not refresh."""

    hint = "the credentials have expired: renew them (and remount if they came from the environment)"


class CredentialsUnavailable(CredentialsRefused):
    """The credentials' source (credential_process, container endpoint, web identity, SSO,
    instance role) failed to give keys when new ones were needed; its one line is logged
    by ``s3fuse.s3.chain``."""


class NoSuchBucket(NotFound):
    pass


class BackendError(FsError):
    """An S3 failure that another attempt will not change (a 4xx the mount did not expect)."""


class UploadGone(BackendError):
    """A multipart upload id the server no longer knows (NoSuchUpload)."""


class Refused(BackendError, NeverCompletes):
    """S3 refused the request for good (400 InvalidArgument, KeyTooLongError,
    InvalidRequest...): sent again it is refused again, so an upload refused so is
    abandoned (its bytes kept in ``recovery/``), never retried every interval."""


class UploadLost(BackendError, NeverCompletes):
    """A multipart upload whose parts released from the staging disk the server no
    longer has (the upload was aborted or expired): it can never complete."""


class ChecksumMismatch(BackendError):
    """Bytes read do not have the MD5 their object carries (``-o verify``)."""


class ChecksumFailedBefore(ChecksumMismatch):
    """A later read of a handle whose whole read failed ``-o verify`` (EIO again; the
    mismatch itself was logged once)."""


class Transient(BackendError):
    """A failure worth another attempt (see s3fuse.s3.retry)."""


class Unreachable(Transient):
    """The endpoint did not answer (connection refused, DNS, timeouts, a body cut short)."""


class ServerBusy(Transient):
    """5xx, 503 SlowDown, 429, RequestTimeout: the server asks to come back later."""


# -- everything the kernel may see -----------------------------------------------------
# kind -> (errno, quiet).  ``quiet`` answers are ordinary (ENOENT from a stat...): logged at
# debug level only; the others are failures, logged with their traceback.
ERRNO = {
    NotFound: (_errno.ENOENT, True),
    Exists: (_errno.EEXIST, True),
    NotEmpty: (_errno.ENOTEMPTY, True),
    IsADirectory: (_errno.EISDIR, True),
    NotADirectory: (_errno.ENOTDIR, True),
    ReadOnly: (_errno.EROFS, True),
    NameTooLong: (_errno.ENAMETOOLONG, True),
    InvalidArgument: (_errno.EINVAL, True),
    NotUtf8Name: (_errno.EILSEQ, True),
    NotPermitted: (_errno.EPERM, True),
    Busy: (_errno.EBUSY, True),
    BadHandle: (_errno.EBADF, False),
    NoSuchAttribute: (_errno.ENODATA, True),
    NotSupported: (_errno.ENOTSUP, True),
    TooLarge: (_errno.EFBIG, False),
    MetadataTooLarge: (_errno.E2BIG, True),
    Stale: (_errno.ESTALE, True),
    WriteFailed: (_errno.EIO, False),
    ShortWrite: (_errno.EIO, False),
    StagingReleased: (_errno.ENOSPC, False),
    ReleasedRead: (_errno.EIO, False),
    AccessDenied: (_errno.EACCES, True),
    ClockSkewed: (_errno.EACCES, False),
    CredentialsRefused: (_errno.EACCES, True),      # logged once by s3.chain, not per request
    ChecksumFailedBefore: (_errno.EIO, True),
    BackendError: (_errno.EIO, False),
    FsError: (_errno.EIO, False),
}


def _entry(exc: BaseException):
    for kind in type(exc).__mro__:
        found = ERRNO.get(kind)
        if found is not None:
            return found
    return None


def errno_of(exc: BaseException) -> int:
    """The errno the kernel sees for ``exc``: its kind's from ``ERRNO``; a local failure
    (``WriteFailed``, an ``OSError`` from the cache disk) keeps its own; anything else
    (a bug) is EIO."""
    if isinstance(exc, WriteFailed) and exc.local_errno > 0:
        return exc.local_errno
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return exc.errno
    found = _entry(exc)
    return found[0] if found is not None else _errno.EIO


def is_no_space(exc: BaseException) -> bool:
    """A local write failed for want of space (ENOSPC, EDQUOT): room may be made."""
    return isinstance(exc, OSError) and exc.errno in (_errno.ENOSPC, _errno.EDQUOT)


def is_quiet(exc: BaseException) -> bool:
    """An everyday answer (logged without a traceback)."""
    found = _entry(exc)
    return found is not None and found[1]


def with_status(exc: FsError, status) -> FsError:
    """``exc`` with the status of the request that failed set (HTTP status or
    "unreachable", "timeout", "cut"), for ``describe`` and the metrics."""
    exc.status = str(status)
    return exc


def set_action(exc: BaseException, action: str):
    """Say what s3fuse did with the data of a failed operation (``describe``'s reader)."""
    try:
        exc.action = action
    except AttributeError:       # an exception type without a __dict__
        pass


def errno_name(code: int) -> str:
    """"EIO" for 5, as the logs and the metrics spell an errno."""
    return _errno.errorcode.get(code, str(code))


def s3_op_name(op: str) -> str:
    """botocore's operation name as S3 spells it: put_object -> PutObject."""
    return "".join(w.upper() if w == "v2" else w.capitalize() for w in op.split("_"))


def describe(exc: BaseException) -> str:
    """One line for a failure: the S3 request, its status and the attempts made (when it
    came from S3), then the message.  E.g. "S3 PutObject failed (status 503, 5 attempts):
    put 'a/b': 503 SlowDown"."""
    message = str(exc) or exc.__class__.__name__
    hint = getattr(exc, "hint", None)
    if hint:
        message = f"{message} ({hint})"
    op = getattr(exc, "s3_op", None)
    if not op:
        return message
    detail = [f"status {exc.status or 'unknown'}"]
    if exc.attempts:
        detail.append(f"{exc.attempts} attempt{'s' if exc.attempts > 1 else ''}")
    return f"S3 {op} failed ({', '.join(detail)}): {message}"


class ConfigError(Exception):
    """A mount option or command-line argument that cannot work; message is user-facing."""
