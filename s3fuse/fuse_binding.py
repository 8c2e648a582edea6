"""The FUSE binding: mfusepy (maintained fork, libfuse 3) when installed, else fusepy
(libfuse 2).  Both expose fusepy's Operations API; this module hides which one it is."""
try:
    import mfusepy as _fuse
    BINDING = "mfusepy"
except ImportError:  # pragma: no cover - exercised only where mfusepy is absent
    import fuse as _fuse
    BINDING = "fusepy"

FUSE = _fuse.FUSE
FuseOSError = _fuse.FuseOSError
Operations = _fuse.Operations
fuse_get_context = _fuse.fuse_get_context
fuse_exit = getattr(_fuse, "fuse_exit", None)
LIBFUSE_MAJOR = getattr(_fuse, "fuse_version_major", 2)
LIBFUSE_MINOR = getattr(_fuse, "fuse_version_minor", 9)


def describe() -> str:
    return f"{BINDING} on libfuse {LIBFUSE_MAJOR}.{LIBFUSE_MINOR}"
