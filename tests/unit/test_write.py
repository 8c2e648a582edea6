"""Unit tests of the write path below the FUSE adapter: RangeSet, PartPlan, the journal,
the Uploader (against a fake S3 client that counts calls, checks Content-MD5 and part
sizes like S3 does, and injects failures), OpenFile streaming/commit and crash recovery."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import stat
import threading
import time

import pytest

from s3fuse import errors
from s3fuse.meta.attrs import MD5_HEADER, Attr
from s3fuse.write import recovery
from s3fuse.write.journal import CLOSED, WRITING, Entry, Journal
from s3fuse.write.openfile import OpenFile
from s3fuse.write.parts import MAX_PART, MAX_PARTS, MIN_PART, PartPlan
from s3fuse.write.ranges import RangeSet
from s3fuse.write.uploader import Uploader

from ..support.fakes import FakeS3 as FakeWriteClient, md5

MiB = 1 << 20
TiB = 1 << 40


def make_uploader(client, tmp_path, threads=4, part_size=5 * MiB, threshold=None):
    journal = Journal(str(tmp_path / "journal"))
    return Uploader(client, journal, threads=threads, part_size=part_size, threshold=threshold), journal


def staged(tmp_path, data: bytes, name="stage") -> str:
    d = tmp_path / "staging"
    d.mkdir(exist_ok=True)
    path = d / name
    path.write_bytes(data)
    return str(path)


def closed_entry(journal, key, staging, data, **kw) -> Entry:
    e = Entry(id=journal.new_id(), key=key, staging=staging, state=CLOSED, size=len(data),
              metadata={"mode": str(stat.S_IFREG | 0o644)}, part_size=5 * MiB, **kw)
    journal.save(e)
    return e


# ---------------------------------------------------------------------------------------
# RangeSet
# ---------------------------------------------------------------------------------------
class TestRangeSet:
    def test_merge_and_query(self):
        r = RangeSet()
        r.add(10, 20)
        r.add(30, 40)
        r.add(20, 30)              # adjacent on both sides: one range
        assert list(r) == [(10, 40)]
        r.add(0, 5)
        r.add(50, 60)
        r.add(3, 12)               # overlaps two
        assert list(r) == [(0, 40), (50, 60)]
        r.add(7, 7)                # empty: ignored
        assert list(r) == [(0, 40), (50, 60)]
        assert r.missing(0, 70) == [(40, 50), (60, 70)]
        assert r.missing(45, 55) == [(45, 50)]
        assert r.missing(5, 35) == []
        assert not r.missing(50, 60) and r.missing(39, 51) == [(40, 50)]
        assert r.contiguous_from_zero() == 40
        r.clip(55)
        assert list(r) == [(0, 40), (50, 55)]
        r.clip(40)
        assert list(r) == [(0, 40)]
        assert RangeSet([(5, 10)]).contiguous_from_zero() == 0
        assert RangeSet().missing(3, 9) == [(3, 9)]

    def test_random_against_bitmap(self):
        rng = random.Random(7)
        for _ in range(200):
            n = 200
            bits = [False] * n
            r = RangeSet()
            for _ in range(rng.randrange(1, 15)):
                op = rng.random()
                a = rng.randrange(n)
                b = rng.randrange(a, n + 1)
                if op < 0.85:
                    r.add(a, b)
                    for i in range(a, b):
                        bits[i] = True
                else:
                    r.clip(a)
                    for i in range(a, n):
                        bits[i] = False
            ranges = list(r)
            # sorted, disjoint, non-adjacent, non-empty
            for (s1, e1), (s2, e2) in zip(ranges, ranges[1:]):
                assert s1 < e1 < s2 < e2
            assert all(s < e for s, e in ranges)
            assert [i for i in range(n) if bits[i]] == [i for s, e in ranges for i in range(s, e)]
            a = rng.randrange(n)
            b = rng.randrange(a, n + 1)
            holes = [i for s, e in r.missing(a, b) for i in range(s, e)]
            assert holes == [i for i in range(a, b) if not bits[i]]
            assert r.contiguous_from_zero() == next((i for i in range(n) if not bits[i]), n)


# ---------------------------------------------------------------------------------------
# PartPlan
# ---------------------------------------------------------------------------------------
class TestPartPlan:
    def test_base_clamped_to_s3_limits(self):
        assert PartPlan(1).base == MIN_PART
        assert PartPlan(8 * MiB).base == 8 * MiB
        assert PartPlan(10 << 30).base == MAX_PART

    @pytest.mark.parametrize("base", [5 * MiB, 5 * MiB + 1, 6 * MiB, 8 * MiB, 64 * MiB, 1 << 30, MAX_PART])
    def test_5_tib_fits_in_10000_parts_of_legal_size(self, base):
        plan = PartPlan(base)
        size = 5 * TiB
        assert plan.capacity >= size, f"base {base}: a {size}-byte file would need more than 10,000 parts"
        parts = plan.parts(size)
        assert len(parts) <= MAX_PARTS
        assert [n for n, _, _ in parts] == list(range(1, len(parts) + 1))
        pos = 0
        for i, (n, start, end) in enumerate(parts):
            assert start == pos and end > start
            assert end - start <= MAX_PART
            if i < len(parts) - 1:
                assert end - start >= MIN_PART, f"part {n} below 5 MiB"
            pos = end
        assert pos == size
        for n in range(1, MAX_PARTS + 1):
            assert MIN_PART <= plan.size_of(n) <= MAX_PART

    @pytest.mark.parametrize("size", [0, 1, 5 * MiB - 1, 5 * MiB, 5 * MiB + 1, 30 * MiB + 1, 5000 * 5 * MiB + 3])
    def test_parts_cover_exactly(self, size):
        plan = PartPlan(5 * MiB)
        parts = plan.parts(size)
        if size == 0:
            assert parts == [(1, 0, 0)]
            return
        assert parts[0][1] == 0 and parts[-1][2] == size
        for (n1, _, e1), (n2, s2, _) in zip(parts, parts[1:]):
            assert n2 == n1 + 1 and s2 == e1
        for n, start, end in parts:
            assert plan.number_at(start) == n and plan.number_at(end - 1) == n
            assert plan.range_of(n)[0] == start
        if size == 5 * MiB:
            assert len(parts) == 1
        if size == 5 * MiB + 1:
            assert len(parts) == 2 and parts[1][2] - parts[1][1] == 1

    def test_plan_is_fixed_by_base_only(self):
        """A streaming writer uploads parts before the size is known: part n must cover the
        same bytes whatever the final size."""
        plan = PartPlan(5 * MiB)
        small = plan.parts(12 * MiB)
        big = plan.parts(100 * MiB)
        assert small[:2] == big[:2]

    def test_too_big_raises(self):
        plan = PartPlan(5 * MiB)
        with pytest.raises(ValueError):
            plan.parts(plan.capacity + 1)


# ---------------------------------------------------------------------------------------
# Journal
# ---------------------------------------------------------------------------------------
class TestJournal:
    def test_roundtrip_and_permissions(self, tmp_path):
        j = Journal(str(tmp_path / "journal"))
        assert stat.S_IMODE(os.stat(j.dir).st_mode) == 0o700
        e = Entry(id=j.new_id(), key="a/b", staging="/x/y", state=WRITING, size=12, md5="ab" * 16,
                  metadata={"mode": "33188"}, upload_id="u1", part_size=5 * MiB, parts={"1": "cd" * 16})
        j.save(e)
        path = os.path.join(j.dir, e.id + ".json")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert j.load(e.id) == e
        assert json.load(open(path))["parts"] == {"1": "cd" * 16}
        e.state = CLOSED
        e.parts["2"] = "ef" * 16
        j.save(e)
        assert j.entries() == [e]
        j.remove(e.id)
        j.remove(e.id)            # twice is fine
        assert j.entries() == []
        assert not os.listdir(j.dir)

    def test_save_is_fsynced_and_atomic(self, tmp_path, monkeypatch):
        j = Journal(str(tmp_path / "journal"))
        e = Entry(id=j.new_id(), key="k", staging="/s", size=1)
        synced = []
        real_fsync = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                     real_fsync(fd)))
        j.save(e)
        assert any(p.endswith(".json.tmp") for p in synced), "the record's data is fsynced before the rename"
        assert synced[-1] == j.dir, "the directory is fsynced after the rename"

    def test_crash_during_save_keeps_previous_record(self, tmp_path, monkeypatch):
        j = Journal(str(tmp_path / "journal"))
        e = Entry(id=j.new_id(), key="k", staging="/s", size=1, parts={"1": "aa"})
        j.save(e)
        before = j.load(e.id)

        # crash between writing the temporary file and the rename
        def crash(src, dst):
            raise KeyboardInterrupt("power cut")
        monkeypatch.setattr(os, "replace", crash)
        e.parts["2"] = "bb"
        e.state = CLOSED
        with pytest.raises(KeyboardInterrupt):
            j.save(e)
        monkeypatch.undo()
        assert os.path.exists(os.path.join(j.dir, e.id + ".json.tmp"))
        j2 = Journal(j.dir)       # the next mount
        assert j2.entries() == [before], "old record intact; the half-saved one is ignored"

    def test_torn_or_foreign_files_are_skipped(self, tmp_path):
        j = Journal(str(tmp_path / "journal"))
        good = Entry(id=j.new_id(), key="k", staging="/s", size=1)
        j.save(good)
        with open(os.path.join(j.dir, "torn.json"), "w") as f:
            f.write('{"id": "torn", "key": ')
        with open(os.path.join(j.dir, "other.json"), "w") as f:
            json.dump({"unexpected": 1}, f)
        with open(os.path.join(j.dir, "x.json.tmp"), "w") as f:
            f.write("{}")
        assert j.entries() == [good]


# ---------------------------------------------------------------------------------------
# Uploader
# ---------------------------------------------------------------------------------------
class TestUploader:
    def test_small_file_is_one_put_with_md5(self, tmp_path):
        c = FakeWriteClient()
        up, j = make_uploader(c, tmp_path)
        data = os.urandom(5 * MiB - 1)
        e = closed_entry(j, "small", staged(tmp_path, data), data)
        etag = up.upload(e)
        assert c.calls == [("put", "small")]
        body, meta, server_etag = c.objects["small"]
        assert body == data and etag == server_etag
        assert meta[MD5_HEADER] == md5(data) and meta["mode"] == str(stat.S_IFREG | 0o644)
        assert up.live() == []

    @pytest.mark.parametrize("size", [5 * MiB, 16 * MiB + 1])
    def test_multipart_with_content_md5_and_whole_md5(self, tmp_path, size):
        c = FakeWriteClient()
        up, j = make_uploader(c, tmp_path)
        data = os.urandom(size)
        e = closed_entry(j, "big", staged(tmp_path, data), data)
        up.upload(e)
        nparts = -(-size // (5 * MiB))
        assert c.count("create_multipart") == 1 and c.count("complete_multipart") == 1
        assert sorted(d for o, d in c.calls if o == "upload_part") == list(range(1, nparts + 1))
        assert c.count("put") == 0 and c.count("copy") == 0
        body, meta, etag = c.objects["big"]
        assert body == data
        assert meta[MD5_HEADER] == md5(data), "the whole-object MD5 is in the metadata (the ETag is not one)"
        assert etag.endswith(f"-{nparts}")
        assert up.parts_sent == nparts
        assert set(j.load(e.id).parts) == {str(n) for n in range(1, nparts + 1)}, "every part journaled"

    @pytest.mark.parametrize("signed", [False, True])
    def test_a_part_carries_content_md5_unless_the_signature_covers_its_body(self, tmp_path, signed):
        """Over plain http every body's SHA-256 is signed (signs_bodies): the parts go
        without Content-MD5, one MD5 pass less; the whole-object MD5 is still there."""
        c = FakeWriteClient()
        c.signs_bodies = signed
        sent = []
        real = c.upload_part
        c.upload_part = lambda key, uid, n, body, content_md5: sent.append(content_md5) or real(key, uid, n, body,
                                                                                                 content_md5)
        up, j = make_uploader(c, tmp_path)
        data = os.urandom(11 * MiB)
        e = closed_entry(j, "big", staged(tmp_path, data), data)
        up.upload(e)
        assert len(sent) == 3
        if signed:
            assert sent == [None] * 3
        else:
            size = e.part_size        # the parts go in parallel: their order is not known
            assert sorted(sent) == sorted(base64.b64encode(hashlib.md5(data[i * size:(i + 1) * size]).digest())
                                          .decode() for i in range(3))
        body, meta, _ = c.objects["big"]
        assert body == data and meta[MD5_HEADER] == md5(data)

    def test_a_part_that_failed_for_good_keeps_the_record(self, tmp_path):
        """The client's retry layer gave up on part 3: the uploader does not retry on top
        of it; the upload fails, and the record keeps the parts already sent."""
        c = FakeWriteClient()
        up, j = make_uploader(c, tmp_path)
        data = os.urandom(11 * MiB)
        e = closed_entry(j, "k", staged(tmp_path, data), data)
        c.fail_when = lambda op, d: errors.Unreachable("down") if (op, d) == ("upload_part", 3) else None
        with pytest.raises(errors.Unreachable):
            up.upload(e)
        assert c.count("upload_part", 3) == 1, "one retry layer: the client's"
        assert "k" not in c.objects
        rec = j.load(e.id)
        assert rec is not None and rec.upload_id and set(rec.parts) == {"1", "2"}

    def test_permanent_errors_are_not_retried(self, tmp_path):
        c = FakeWriteClient()
        up, j = make_uploader(c, tmp_path)
        data = os.urandom(1000)
        e = closed_entry(j, "k", staged(tmp_path, data), data)
        c.fail["put"] = [errors.AccessDenied("403")]
        with pytest.raises(errors.AccessDenied):
            up.upload(e)
        assert c.count("put") == 1

    def test_a_failed_part_cancels_the_queued_ones(self, tmp_path):
        """Once a part has failed for good the upload is lost for now: the parts still queued
        must not go on retrying against the failing server (holding up the shared pool), and
        nothing may touch the journal record after upload() has raised."""
        c = FakeWriteClient()
        up, j = make_uploader(c, tmp_path, threads=1)
        data = os.urandom(30 * MiB)
        e = closed_entry(j, "k", staged(tmp_path, data), data)

        def down(op, detail):
            if op == "upload_part":
                time.sleep(0.05)             # a refused connection takes a moment
                return errors.Unreachable("down")
        c.fail_when = down
        with pytest.raises(errors.Unreachable):
            up.upload(e)
        calls = c.count("upload_part")
        tried = {d for o, d in c.calls if o == "upload_part"}
        assert tried <= {1, 2}, f"parts {sorted(tried)} tried: the queued parts were not cancelled"
        up.close()                           # waits for anything still queued
        assert c.count("upload_part") == calls, "nothing ran after upload() raised"

    def test_part_etags_that_are_not_md5s_are_recorded_and_completed(self, tmp_path):
        """SSE-KMS and SSE-C part ETags on AWS are not MD5s: the upload records each as the
        server answered it and CompleteMultipartUpload names those (it used to refuse the
        part and retry forever)."""
        c = FakeWriteClient()
        c.part_etags = "kms"
        up, j = make_uploader(c, tmp_path)
        data = os.urandom(12 * MiB)
        e = closed_entry(j, "k", staged(tmp_path, data), data)
        saved = []
        real = j.write
        j.write = lambda entry_id, blob: (saved.append(json.loads(blob)), real(entry_id, blob))
        up.upload(e)
        assert c.objects["k"][0] == data and c.objects["k"][1][MD5_HEADER] == md5(data)
        parts = saved[-1]["parts"]
        assert parts["1"] == [md5(data[:5 * MiB]), c.kms_etag(data[:5 * MiB])], parts
        assert all(m != etag for m, etag in parts.values())

    def test_resume_keeps_parts_by_recorded_etag_when_etags_are_not_md5s(self, tmp_path):
        data = os.urandom(16 * MiB)
        P = [data[i:i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
        c = FakeWriteClient()
        c.part_etags = "kms"
        up, j = make_uploader(c, tmp_path)
        uid = c.create_multipart("k", {"mode": "33188", MD5_HEADER: md5(data)})
        for n in (1, 2, 3):
            c.uploads[uid]["parts"][n] = (P[n - 1], c.kms_etag(P[n - 1]))
        # 1 and 2 recorded with their ETags, 3 sent but not recorded (crash in between)
        e = closed_entry(j, "k", staged(tmp_path, data), data, upload_id=uid, md5=md5(data),
                         parts={str(n): [md5(P[n - 1]), c.kms_etag(P[n - 1])] for n in (1, 2)},
                         uploaded_metadata={"mode": "33188", MD5_HEADER: md5(data)})
        e.metadata = dict(e.uploaded_metadata)
        j.save(e)
        c.calls.clear()
        up.upload(Journal(j.dir).load(e.id), verify_server_parts=True)
        assert sorted(d for o, d in c.calls if o == "upload_part") == [3, 4], \
            "recorded parts kept by ETag; an unrecorded non-MD5 ETag cannot be checked: sent again"
        assert up.parts_reused == 2 and c.objects["k"][0] == data

    def test_resume_of_a_record_from_before_server_etags(self, tmp_path):
        """Records written before part ETags were kept hold only the MD5 (then also the ETag)."""
        data = os.urandom(11 * MiB)
        P = [data[i:i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
        c, up, j, e = self._interrupted(tmp_path, data, {1: P[0]}, {1: md5(P[0])})
        up.upload(Journal(j.dir).load(e.id), verify_server_parts=True)
        assert sorted(d for o, d in c.calls if o == "upload_part") == [2, 3] and up.parts_reused == 1
        assert c.objects["k"][0] == data

    def _interrupted(self, tmp_path, data, server_parts, journal_parts):
        """A CLOSED record of an upload interrupted by a crash: the server holds
        ``server_parts`` {n: bytes}, the journal claims ``journal_parts`` {n: md5}."""
        c = FakeWriteClient()
        up, j = make_uploader(c, tmp_path)
        uid = c.create_multipart("k", {"mode": "33188", MD5_HEADER: md5(data)})
        for n, body in server_parts.items():
            c.uploads[uid]["parts"][n] = (body, md5(body))
        e = closed_entry(j, "k", staged(tmp_path, data), data, upload_id=uid, md5=md5(data),
                         parts={str(n): m for n, m in journal_parts.items()},
                         uploaded_metadata={"mode": "33188", MD5_HEADER: md5(data)})
        e.metadata = dict(e.uploaded_metadata)
        j.save(e)
        c.calls.clear()
        return c, up, j, e

    def test_resume_keeps_matching_parts_and_resends_the_rest(self, tmp_path):
        data = os.urandom(21 * MiB)
        P = [data[i:i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]      # 5 parts
        server = {1: P[0], 2: P[1], 3: b"stale" + P[2][5:]}                 # part 3 does not match
        journal = {1: md5(P[0]), 2: md5(P[1]), 3: md5(P[2])}                # 3 claimed (crash mid-part)
        c, up, j, e = self._interrupted(tmp_path, data, server, journal)
        e2 = Journal(j.dir).load(e.id)       # as the next mount reads it
        up.upload(e2, verify_server_parts=True)
        assert c.count("list_parts") == 1
        assert sorted(d for o, d in c.calls if o == "upload_part") == [3, 4, 5]
        assert c.count("create_multipart") == 0
        assert up.parts_reused == 2 and up.parts_sent == 3
        assert c.objects["k"][0] == data
        assert c.objects["k"][1][MD5_HEADER] == md5(data)

    def test_resume_trusts_the_server_not_the_journal(self, tmp_path):
        """Parts on the server the journal never heard of (crash after the server stored it,
        before the record was saved) are reused once their ETag equals the local MD5."""
        data = os.urandom(16 * MiB)
        P = [data[i:i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
        c, up, j, e = self._interrupted(tmp_path, data, {1: P[0], 2: P[1], 3: P[2]}, {1: md5(P[0])})
        up.upload(Journal(j.dir).load(e.id), verify_server_parts=True)
        assert sorted(d for o, d in c.calls if o == "upload_part") == [4]
        assert up.parts_reused == 3
        assert c.objects["k"][0] == data

    def test_resume_when_the_upload_is_gone_starts_again(self, tmp_path):
        data = os.urandom(11 * MiB)
        c, up, j, e = self._interrupted(tmp_path, data, {}, {1: "00" * 16})
        del c.uploads[e.upload_id]            # expired / aborted by a lifecycle rule / new server
        up.upload(Journal(j.dir).load(e.id), verify_server_parts=True)
        assert c.count("create_multipart") == 1
        assert sorted(d for o, d in c.calls if o == "upload_part") == [1, 2, 3]
        assert c.objects["k"][0] == data and c.objects["k"][1][MD5_HEADER] == md5(data)


# ---------------------------------------------------------------------------------------
# OpenFile: streaming while writing, commit, failures; recovery
# ---------------------------------------------------------------------------------------
def new_file(tmp_path, up, j, key="f"):
    attr = Attr(mode=stat.S_IFREG | 0o644, uid=0, gid=0, size=0, mtime_ns=time.time_ns())
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    return OpenFile("/" + key, key, attr, str(staging), up, j, new=True)


def write_all(f, data, chunk=128 << 10, start=0):
    for off in range(0, len(data), chunk):
        f.write(start + off, data[off:off + chunk])


class TestOpenFile:
    def test_sequential_writer_streams_full_parts_before_close(self, tmp_path):
        c = FakeWriteClient()
        up, j = make_uploader(c, tmp_path)
        f = new_file(tmp_path, up, j)
        data = os.urandom(16 * MiB + 5)
        write_all(f, data)
        deadline = time.monotonic() + 10
        while c.count("upload_part") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.count("upload_part") == 3, "the three full parts went up while the file was open"
        [rec] = j.entries()
        assert rec.state == WRITING
        f.commit()
        assert c.count("upload_part") == 4 and c.count("put") == 0
        body, meta, _ = c.objects["f"]
        assert body == data and meta[MD5_HEADER] == md5(data)
        assert j.entries() == []
        assert f.discard() is None and not os.path.exists(f.staging)

    def test_streaming_waits_for_the_multipart_threshold(self, tmp_path):
        """multipart_threshold above part_size: nothing streams while the file may still end
        below the threshold (it would be one PutObject); once past it, the full parts go."""
        c = FakeWriteClient()
        up, j = make_uploader(c, tmp_path, threshold=12 * MiB)
        small = new_file(tmp_path, up, j, key="small")
        data = os.urandom(17 * MiB)
        write_all(small, data[:11 * MiB])
        time.sleep(0.2)
        assert c.calls == [], "11 MiB < threshold: nothing sent yet"
        small.commit()
        assert [o for o, _ in c.calls] == ["put"]
        small.discard()
        big = new_file(tmp_path, up, j, key="big")
        write_all(big, data)
        deadline = time.monotonic() + 10
        while c.count("upload_part") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.count("upload_part") == 3, "the three full parts streamed once the file passed 12 MiB"
        big.commit()
        assert c.objects["big"][0] == data and c.count("upload_part") == 4
        big.discard()

    def test_rewrite_of_a_streamed_part_is_sent_again(self, tmp_path):
        c = FakeWriteClient()
        up, j = make_uploader(c, tmp_path)
        f = new_file(tmp_path, up, j)
        data = bytearray(os.urandom(12 * MiB))
        write_all(f, bytes(data))
        f.write(100, b"X" * 10)        # into part 1, already streamed
        data[100:110] = b"X" * 10
        f.commit()
        assert c.objects["f"][0] == bytes(data)
        assert c.objects["f"][1][MD5_HEADER] == md5(bytes(data))
        assert c.count("upload_part", 1) == 2
        f.discard()

    def test_truncate_aborts_the_stream(self, tmp_path):
        c = FakeWriteClient()
        up, j = make_uploader(c, tmp_path)
        f = new_file(tmp_path, up, j)
        data = os.urandom(12 * MiB)
        write_all(f, data)
        f.truncate(3 * MiB)
        assert c.count("abort_multipart") == 1 and c.uploads == {}
        f.commit()
        assert c.objects["f"][0] == data[:3 * MiB]
        f.discard()

    def test_record_is_closed_while_streamed_parts_are_still_uploading(self, tmp_path):
        """Once close() is reached the data is final: a crash while streamed parts are still
        in flight must resume the upload, not move the file to recovery."""
        c = FakeWriteClient()
        up, j = make_uploader(c, tmp_path, threads=1)
        gate = threading.Event()
        c.block = lambda op, d: gate.wait(10) if op == "upload_part" else None
        f = new_file(tmp_path, up, j)
        data = os.urandom(16 * MiB)
        write_all(f, data)
        t = threading.Thread(target=f.commit)
        t.start()
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not [e for e in j.entries() if e.state == CLOSED]:
                time.sleep(0.01)
            [rec] = j.entries()
            assert rec.state == CLOSED and rec.size == len(data) and rec.upload_id
        finally:
            gate.set()
            t.join(10)
        assert c.objects["f"][0] == data
        f.discard()

    def test_failed_upload_keeps_record_and_staging_then_resumes(self, tmp_path):
        c = FakeWriteClient()
        up, j = make_uploader(c, tmp_path)
        f = new_file(tmp_path, up, j)
        data = os.urandom(12 * MiB + 1)
        c.fail_when = lambda op, d: errors.Unreachable("down") if op != "abort_multipart" else None
        write_all(f, data)
        with pytest.raises(errors.Unreachable):
            f.commit()
        pending = f.discard()
        assert pending is not None and pending.staging == f.staging, "the staging file is kept for the retry"
        [rec] = j.entries()
        assert rec.state == CLOSED and os.path.exists(rec.staging)
        c.fail_when = None
        closed, writing = recovery.sort_out(Journal(j.dir), str(tmp_path / "staging"), str(tmp_path / "recovery"))
        assert [e.id for e in closed] == [rec.id] and writing == []
        recovery.resume(up, j, closed[0])
        assert c.objects["f"][0] == data and c.objects["f"][1][MD5_HEADER] == md5(data)
        assert j.entries() == [] and not os.path.exists(rec.staging)

    def test_repeated_failed_commits_leave_one_record(self, tmp_path):
        """A writer that fsyncs while the server is down and goes on writing: every failed
        commit replaces the record of the previous one (one record per staging file, the
        earlier multipart uploads aborted), and the last commit uploads everything."""
        c = FakeWriteClient()
        up, j = make_uploader(c, tmp_path)
        f = new_file(tmp_path, up, j)
        data = os.urandom(23 * MiB)
        write_all(f, data[:6 * MiB])
        c.fail_when = lambda op, d: errors.Unreachable("down") if op in ("upload_part", "put") else None
        for end in (12 * MiB, 18 * MiB):
            with pytest.raises(errors.Unreachable):
                f.commit()
            assert [(e.state, e.staging) for e in j.entries()] == [(CLOSED, f.staging)]
            write_all(f, data[f.size:end], start=f.size)
        with pytest.raises(errors.Unreachable):
            f.commit()
        [rec] = j.entries()
        assert rec.size == 18 * MiB
        write_all(f, data[18 * MiB:], start=18 * MiB)
        c.fail_when = None
        f.commit()
        assert c.objects["f"][0] == data and c.objects["f"][1][MD5_HEADER] == md5(data)
        assert j.entries() == [] and c.uploads == {}, "no record and no multipart upload left behind"
        assert f.discard() is None

    def test_failed_staging_write_poisons_the_file(self, tmp_path):
        c = FakeWriteClient()
        up, j = make_uploader(c, tmp_path)
        f = new_file(tmp_path, up, j)
        f.write(0, b"abc")
        os.close(f._fd)
        f._fd = os.open("/dev/full", os.O_WRONLY)
        with pytest.raises(OSError):
            f.write(3, b"def")
        with pytest.raises(errors.FsError) as info:
            f.commit()
        assert info.value.errno == 28       # ENOSPC reported to close too
        assert c.objects == {}
        assert f.discard() is None and not os.path.exists(f.staging)

    def test_sort_out_after_crash(self, tmp_path):
        j = Journal(str(tmp_path / "journal"))
        staging, rec_dir = tmp_path / "staging", tmp_path / "recovery"
        staging.mkdir()
        (staging / "w").write_bytes(b"unfinished")
        (staging / "c").write_bytes(b"final")
        (staging / "orphan").write_bytes(b"no record")
        (staging / "empty").write_bytes(b"")
        w = Entry(id="w1", key="dir/w", staging=str(staging / "w"), state=WRITING, upload_id="u")
        c = Entry(id="c1", key="c", staging=str(staging / "c"), state=CLOSED, size=5)
        lost = Entry(id="l1", key="lost", staging=str(staging / "gone"), state=CLOSED, size=5)
        for e in (w, c, lost):
            j.save(e)
        closed, writing = recovery.sort_out(j, str(staging), str(rec_dir))
        assert [e.id for e in closed] == ["c1"] and [e.id for e in writing] == ["w1"]
        assert sorted(os.listdir(staging)) == ["c"]
        kept = {p: (rec_dir / p).read_bytes() for p in os.listdir(rec_dir)}
        assert sorted(kept.values()) == [b"no record", b"unfinished"]
        assert any(p.endswith("dir%2Fw") for p in kept)
        assert j.load("l1") is None
        client = FakeWriteClient()
        recovery.abort_writing(client, j, writing[0])
        assert client.calls == [("abort_multipart", "u")] and j.load("w1") is None

    @pytest.mark.parametrize("state", [WRITING, CLOSED])
    def test_upload_created_but_never_recorded_is_aborted(self, tmp_path, state):
        """The server created an upload but its id never reached the record (a crash or a
        lost answer right after CreateMultipartUpload): the next start finds it by key and
        time and aborts it - a WRITING record's as it abandons it, a CLOSED record's before
        its upload starts again.  Other uploads (another key, the same key long ago) stay."""
        c = FakeWriteClient()
        up, j = make_uploader(c, tmp_path)
        old = c.create_multipart("k")
        c.uploads[old]["initiated"] -= 3600             # the same key, an hour before
        other = c.create_multipart("k2")
        real_create = FakeWriteClient.create_multipart

        def create_then_lose_answer(key, metadata=None, content_type=None):
            real_create(c, key, metadata, content_type)      # the server creates it...
            raise errors.Unreachable("the answer is lost")
        c.create_multipart = create_then_lose_answer
        staging = tmp_path / "s"
        staging.write_bytes(b"x" * (6 * MiB))
        e = Entry(id="e1", key="k", staging=str(staging), state=state, size=6 * MiB, created=time.time())
        with pytest.raises(errors.Unreachable):
            up.begin_multipart(e)
        lost = [u for u in c.uploads if u not in (old, other)]
        assert len(lost) == 1 and j.load("e1").creating and j.load("e1").upload_id is None
        c.create_multipart = lambda *a, **k: real_create(c, *a, **k)
        # the next start
        if state == WRITING:
            recovery.abort_writing(c, j, j.load("e1"))
            assert j.load("e1") is None
        else:
            recovery.resume(up, j, j.load("e1"))
            assert c.objects["k"][0] == b"x" * (6 * MiB)
        assert lost[0] not in c.uploads, "the unrecorded upload is aborted"
        assert old in c.uploads and other in c.uploads

    def test_sort_out_drops_a_cut_record_and_keeps_its_staging_file(self, tmp_path):
        """A small file's record is written without fsync: after a power loss it may be
        cut.  It is removed, never resumed, and its staging data is kept in recovery/."""
        j = Journal(str(tmp_path / "journal"))
        staging, rec_dir = tmp_path / "staging", tmp_path / "recovery"
        staging.mkdir()
        (staging / "s").write_bytes(b"small file")
        e = Entry(id="s1", key="small", staging=str(staging / "s"), state=CLOSED, size=10)
        j.save(e, durable=False)
        assert j.load("s1") == e, "an in-place record reads back whole"
        record = tmp_path / "journal" / "s1.json"
        record.write_bytes(record.read_bytes()[:20])
        closed, writing = recovery.sort_out(j, str(staging), str(rec_dir))
        assert closed == [] and writing == []
        assert os.listdir(tmp_path / "journal") == []
        assert [(rec_dir / p).read_bytes() for p in os.listdir(rec_dir)] == [b"small file"]

    def test_sort_out_checks_unsynced_staging_against_its_md5(self, tmp_path):
        """A staging file closed without fsync (MD5 recorded instead) that a power loss
        damaged is never resumed: it goes to recovery and its upload is aborted."""
        j = Journal(str(tmp_path / "journal"))
        staging, rec_dir = tmp_path / "staging", tmp_path / "recovery"
        staging.mkdir()
        good, bad, short = b"good data", b"was this", b"whole"
        (staging / "good").write_bytes(good)
        (staging / "bad").write_bytes(b"\0" * len(bad))          # pages lost: zeros
        (staging / "short").write_bytes(short[:2])                # size not yet on disk
        for name, data in (("good", good), ("bad", bad), ("short", short)):
            j.save(Entry(id=name, key=name, staging=str(staging / name), state=CLOSED, size=len(data),
                         md5=hashlib.md5(data).hexdigest(), verify_md5=True, upload_id=f"u-{name}"))
        closed, writing = recovery.sort_out(j, str(staging), str(rec_dir))
        assert [e.id for e in closed] == ["good"]
        assert sorted(e.id for e in writing) == ["bad", "short"]
        assert sorted(p.read_bytes() for p in rec_dir.iterdir()) == [b"\0" * len(bad), short[:2]]
        client = FakeWriteClient()
        for e in writing:
            recovery.abort_writing(client, j, e)
        assert sorted(client.calls) == [("abort_multipart", "u-bad"), ("abort_multipart", "u-short")]
        assert [e.id for e in j.entries()] == ["good"]

    @pytest.mark.parametrize("sequential", [True, False])
    def test_multipart_commit_records_the_md5_or_fsyncs_the_staging_file(self, tmp_path, monkeypatch, sequential):
        """Power-loss safety of a multipart upload: the close path fsyncs the staging file
        only when no whole-file MD5 can vouch for it at recovery."""
        c = FakeWriteClient()
        up, j = make_uploader(c, tmp_path)
        f = new_file(tmp_path, up, j)
        data = os.urandom(6 * MiB)
        if sequential:
            write_all(f, data)
        else:
            write_all(f, data[MiB:], start=MiB)
            f.write(0, data[:MiB])
        synced, records = [], []
        real_fsync, real_save = os.fsync, j.save
        monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                     real_fsync(fd))[1])
        monkeypatch.setattr(j, "save", lambda e, **kw: (records.append((e.state, e.md5, e.verify_md5)),
                                                         real_save(e, **kw))[1])
        f.commit()
        assert c.objects["f"][0] == data
        closed = [r for r in records if r[0] == CLOSED]
        assert closed, "a CLOSED record was saved before the upload"
        if sequential:
            assert f.staging not in synced, "no fsync of the staging file"
            assert all(r == (CLOSED, md5(data), True) for r in closed)
        else:
            assert f.staging in synced, "staging fsynced: no MD5 to check it against"
            assert all(r[2] is False for r in closed)
        f.discard()

    def test_sort_out_resumes_only_the_newest_close_of_a_key(self, tmp_path):
        """Two failed uploads of one path (v1 closed, then v2 closed): resuming both in
        journal order (ids are random) could leave v1 in the bucket."""
        j = Journal(str(tmp_path / "journal"))
        staging, rec_dir = tmp_path / "staging", tmp_path / "recovery"
        staging.mkdir()
        recs = []
        for i, (name, created) in enumerate((("v1", 100.0), ("v2", 200.0), ("v0", 50.0))):
            (staging / name).write_bytes(name.encode())
            recs.append(Entry(id=f"{9 - i}x", key="same", staging=str(staging / name), state=CLOSED, size=2,
                              upload_id=f"u-{name}", created=created))
            j.save(recs[-1])
        other = Entry(id="0o", key="other", staging=str(staging / "o"), state=CLOSED, size=1, created=10.0)
        (staging / "o").write_bytes(b"o")
        j.save(other)
        closed, writing = recovery.sort_out(j, str(staging), str(rec_dir))
        assert [e.staging for e in closed] == [other.staging, str(staging / "v2")]
        assert sorted(e.upload_id for e in writing) == ["u-v0", "u-v1"]
        assert sorted(p.read_bytes() for p in rec_dir.iterdir()) == [b"v0", b"v1"], "older versions kept"
        for e in writing:
            recovery.abort_writing(FakeWriteClient(), j, e)
        assert sorted(e.id for e in j.entries()) == ["0o", "8x"]


# ---------------------------------------------------------------------------------------
# SequentialMD5: the whole-file MD5 beside the write path
# ---------------------------------------------------------------------------------------
def gated_md5(monkeypatch):
    """Make SequentialMD5's hashing wait for the returned Event (a stuck hasher thread)."""
    from s3fuse.write import hashing
    gate = threading.Event()
    real_md5 = hashlib.md5

    class GatedMD5:
        def __init__(self):
            self.h = real_md5()

        def update(self, d):
            gate.wait()
            self.h.update(d)

        def hexdigest(self):
            return self.h.hexdigest()

    monkeypatch.setattr(hashing.hashlib, "md5", GatedMD5)
    return gate


class TestSequentialMD5:
    def test_digest_equals_hashlib_across_inline_and_thread(self, monkeypatch):
        from s3fuse.write import hashing
        hashed_by = []
        real_run = hashing.SequentialMD5._run

        def run(self):
            hashed_by.append(threading.current_thread().name)
            real_run(self)
        monkeypatch.setattr(hashing.SequentialMD5, "_run", run)
        h = hashing.SequentialMD5(inline_limit=100 << 10, max_queued=256 << 10)
        data = os.urandom(3 * MiB + 7)
        for off in range(0, len(data), 64 << 10):
            h.update(data[off:off + (64 << 10)])
        assert h.hexdigest() == md5(data)
        assert hashed_by == ["md5"], "beyond the inline limit, the hasher's own thread took over"
        more = os.urandom(1000)
        h.update(more)
        assert h.hexdigest() == md5(data + more), "usable again after a digest"

    def test_queue_is_bounded(self, monkeypatch):
        from s3fuse.write.hashing import SequentialMD5
        seen = []
        expected = md5(b"x" * 1024 * 20)
        gate = gated_md5(monkeypatch)
        h = SequentialMD5(inline_limit=0, max_queued=4 << 10)
        writer = threading.Thread(target=lambda: [h.update(b"x" * 1024) or seen.append(i) for i in range(20)])
        writer.start()
        time.sleep(0.3)
        assert 4 <= len(seen) <= 6, f"writer ran {len(seen)} updates ahead of a stuck hasher"
        gate.set()
        writer.join(5)
        assert h.hexdigest() == expected

    def test_cancel_releases_a_writer_waiting_for_room(self, monkeypatch):
        from s3fuse.write.hashing import SequentialMD5
        gate = gated_md5(monkeypatch)
        h = SequentialMD5(inline_limit=0, max_queued=1)
        h.update(b"first")                    # taken by the (stuck) thread
        writer = threading.Thread(target=lambda: h.update(b"second"))
        writer.start()
        writer.join(0.3)
        assert writer.is_alive(), "no room: the writer waits"
        h.cancel()
        writer.join(2)
        assert not writer.is_alive(), "cancel (truncate, close) releases it"
        gate.set()
