"""Foreground lookups are never queued behind the HEAD prefetch of a big listing (issue
#22, item 7): ``ls -l`` of a directory of many objects queues one pipelined HEAD batch per
16 objects; a lookup of a name that needs a request (in another directory, or once the
listing is older than negative_ttl: ``touch new``, ``stat other/x``) must not wait until
all of them are done (2.3 s with 20,000 objects listed), and a lookup of a name still
queued in a batch is answered at once, by its own HEAD.

The fake server's HEAD batches are held at a gate, so the pool of prefetch threads is busy
and the rest of the batches are queued: what the lookups did is counted in the requests
recorded before the gate opened (no timing)."""
from __future__ import annotations

import stat
import threading

import pytest

from s3fuse import errors
from s3fuse.meta.attrs import Defaults
from s3fuse.meta.cache import MetaCache
from s3fuse.meta.known import KnownMetadata
from s3fuse.meta.namespace import Namespace
from s3fuse.paths import KeyMapper

from ..support.fakes import FakeS3

THREADS = 4
FILES = Namespace.HEAD_BATCH * 40        # 40 batches: 4 in flight, 36 queued


class GatedHeads(FakeS3):
    """HEAD batches wait at ``gate``; everything else answers at once."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.block = lambda method, detail: self.gate.wait(30) if method == "head_many" else None


@pytest.fixture
def setup(tmp_path):
    fake = GatedHeads()
    for i in range(FILES):
        fake.seed(f"big/f{i:04d}", b"x", {"uid": str(1000 + i)})
    known = KnownMetadata(str(tmp_path / "meta"), fake.bucket)
    ns = Namespace(fake, KeyMapper(""), MetaCache(60, 60, 60), known,
                   Defaults(uid=500, gid=600, file_mode=0o640, dir_mode=0o750), exact=True, head_threads=THREADS)
    ns.list_dir("/big")                  # queues the listing's HEAD batches
    wait_until(lambda: fake.count("head_many") == THREADS)
    yield fake, ns
    fake.gate.set()
    ns.close()
    known.close()


def wait_until(condition, timeout=10.0):
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition not reached")


def in_background(fn):
    """Run ``fn`` in a thread; (thread, outcome dict with "value" or "error")."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = fn()
        except BaseException as exc:          # noqa: B036 - handed to the test
            outcome["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, outcome


def test_lookup_of_a_new_name_does_not_wait_for_the_queued_batches(setup):
    fake, ns = setup
    t, outcome = in_background(lambda: ns.lookup("/other/new-file"))
    t.join(10)           # a deadlock guard only: the HEAD batches stay held until it ends
    answered_while_held = not t.is_alive()
    batches_before = fake.count("head_many")
    fake.gate.set()
    t.join(30)
    assert isinstance(outcome.get("error"), errors.NotFound), outcome
    assert answered_while_held, "the lookup waited for the listing's queued HEAD batches"
    probe = fake.calls.index(("list_page", ("other/new-file/", None)))
    assert ("head", "other/new-file") in fake.calls
    assert sum(1 for m, _ in fake.calls[:probe] if m == "head_many") == THREADS == batches_before, \
        "only the batches already in flight went out before the lookup's directory probe"


def test_lookup_of_a_name_in_a_queued_batch_is_answered_by_its_own_head(setup):
    fake, ns = setup
    last = FILES - 1
    t, outcome = in_background(lambda: ns.lookup(f"/big/f{last:04d}"))
    t.join(10)
    answered_while_held = not t.is_alive()
    fake.gate.set()
    t.join(30)
    attr = outcome.get("value")
    assert answered_while_held and attr is not None, outcome
    assert attr.exact and attr.uid == 1000 + last and attr.mode == stat.S_IFREG | 0o640
    wait_until(lambda: fake.count("head_many") == FILES // Namespace.HEAD_BATCH and not ns._pending)
    assert fake.count("head", f"big/f{last:04d}") == 1, "its batch skipped the name looked up first"
