"""-o verify at the file layer: the read that completes a whole sequential read of an
object compares the MD5 of what was read with the one the object carries."""
from __future__ import annotations

from .. import errors
from ..meta.attrs import MD5_HEADER
from .handles import Handle


def check_read(files, handle: Handle, offset: int, data):
    """Feed ``data`` (read at ``offset`` through ``handle``) to the handle's digest.
    After a mismatch every read of the handle fails (the kernel asks again for a page
    whose read failed: it must not get the bytes then), the version's cached blocks are
    dropped and the kernel's pages not kept.  ``files``: the FileOps."""
    digest = handle.verify
    obj = handle.reader.obj
    if digest.failed is not None:
        raise errors.ChecksumFailedBefore(f"{handle.path}: its whole read failed -o verify before")
    got = digest.feed(offset, data)
    if got is None or got == digest.expected:
        return
    digest.failed = got
    dropped = files.blocks.drop(obj.key, obj.etag, files.fetcher.last_index(obj) + 1)
    files.handles.forget_kernel_cache(handle.path)
    exc = errors.ChecksumMismatch(f"{handle.path}: MD5 of the whole read is {got}, the object's "
                                  f"x-amz-meta-{MD5_HEADER} says {digest.expected} (ETag {obj.etag})")
    errors.set_action(exc, f"the read failed; {dropped} cached blocks of this version dropped and the "
                           f"kernel's pages not kept, so a re-read fetches from S3 again (if that fails "
                           f"too, the bytes on the server do not match the object's MD5 header)")
    raise exc
