"""Metadata at S3's limits (#22): an extended attribute that would push an object's user
metadata over S3's 2 KiB is refused at setxattr (E2BIG) - not accepted and then failed
for good at upload (400 MetadataTooLarge) - and the file keeps its earlier xattrs."""
from __future__ import annotations

import errno
import os

import pytest

from ..support.probes import wait_for


@pytest.mark.parametrize("when", ["closed", "open"])
def test_an_xattr_over_the_metadata_limit_is_refused_with_e2big(mounter, s3, bucket, when):
    m = mounter(bucket)
    path = m.p("f.txt")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"content")
    if when == "closed":
        os.close(fd)
    os.setxattr(path, "user.short", b"kept")
    with pytest.raises(OSError) as exc:
        os.setxattr(path, "user.xdg.origin.url", b"https://example.com/" + b"a" * 1800)
    assert exc.value.errno == errno.E2BIG
    if when == "open":
        os.close(fd)
    head = wait_for(lambda: s3.head_object(Bucket=bucket, Key="f.txt"), 10, "f.txt in the bucket")
    assert s3.get_object(Bucket=bucket, Key="f.txt")["Body"].read() == b"content"
    assert os.listxattr(path) == ["user.short"] and os.getxattr(path, "user.short") == b"kept"
    assert "xattr" in head["Metadata"]
    # a value that fits (1 KiB: 1.4 KiB of base64) still goes in
    os.setxattr(path, "user.fits", b"b" * 1024)
    m.unmount()
    m.mount()
    assert os.getxattr(path, "user.fits") == b"b" * 1024
