"""The pieces of a read's answer, as both reply paths (plain read, read_buf) walk them."""
import ctypes
import os

import pytest

from s3fuse import errors
from s3fuse.data.valuefiles import CacheFile
from s3fuse.fuse import pieces


def _region(tmp_path, data: bytes, lo: int, hi: int):
    p = tmp_path / "value"
    p.write_bytes(data)
    return CacheFile(os.open(p, os.O_RDONLY), len(data)).region(lo, hi)


def test_sizes_of_every_kind_of_piece(tmp_path):
    region = _region(tmp_path, b"0123456789", 2, 7)
    answer = [b"ab", bytearray(b"cde"), memoryview(b"fghi")[1:], region]
    assert [n for _, n in pieces.sized(answer, 13)] == [2, 3, 3, 5]


def test_an_answer_longer_than_asked_is_an_error_not_a_longer_reply(tmp_path):
    region = _region(tmp_path, b"0123456789", 0, 10)
    walked = pieces.sized([b"abc", region], 12)
    assert next(walked) == (b"abc", 3)
    with pytest.raises(errors.FsError, match="read of 12 bytes answered 13"):
        next(walked)


def test_memmove_sources_copy_the_right_bytes():
    out = ctypes.create_string_buffer(12)
    at = ctypes.addressof(out)
    done = 0
    for piece in (b"ab", bytearray(b"cde"), memoryview(b"xfghx")[1:4], memoryview(bytearray(b"ijkl"))):
        n = memoryview(piece).nbytes
        ctypes.memmove(at + done, pieces.memmove_source(piece, n), n)
        done += n
    assert out.raw == b"abcdefghijkl"
