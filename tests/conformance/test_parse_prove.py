"""Unit tests of run_pjdfstest.py's prove output parser and failure attribution (no mount,
no pjdfstest build)."""
from __future__ import annotations

from . import run_pjdfstest as pjd

A = "pjdfstest_" + "a" * 32
B = "pjdfstest_" + "b" * 32
D = "pjdfstest_" + "d" * 32

OUTPUT = f"""\
/cache/pjdfstest-x/tests/chmod/00.t .. 
1..9
ok 1 - tried 'mkdir {D} 0755', expected 0 [line 19]
not ok 2 - tried 'mkfifo {D}/{A} 0644', expected 0, got ENOSYS [line 25]
not ok 3 - tried 'chmod {D}/{A} 0111', expected 0, got ENOENT [line 26]
ok 4 - tried 'symlink {D}/{A} {B}', expected 0 [line 29]
not ok 5 - tried 'chmod {B} 0222', expected 0, got ENOENT [line 31]
not ok 6 - tried 'rmdir {D}', expected EEXIST|ENOTEMPTY, got 0 [line 33]
not ok 7 - test_check 1795612245 -lt 1795612245 [line 40]
ok 8 - tried 'create {A} 0644', expected 0 [line 41]
not ok 9 - tried 'stat {A} ctime', expected 5, got 4 [line 42]
Failed 7/9 subtests
/cache/pjdfstest-x/tests/chmod/01.t .. 
1..3
ok 1 - tried 'mkdir {D} 0755', expected 0 [line 19]
not ok 2 # TODO known on this fs
Failed 1/3 subtests
/cache/pjdfstest-x/tests/chmod/02.t .. ok

Test Summary Report
-------------------
/cache/pjdfstest-x/tests/chmod/00.t (Wstat: 0 Tests: 9 Failed: 7)
  Failed tests:  2-3, 5-7, 9
/cache/pjdfstest-x/tests/chmod/01.t (Wstat: 0 Tests: 2 Failed: 0)
  Parse errors: Bad plan.  You planned 3 tests but ran 2.
Files=3, Tests=11, 3 wallclock secs ( 0.01 usr  0.00 sys +  0.30 cusr  0.10 csys =  0.41 CPU)
Result: FAIL
"""


def test_counts_failed_todo_and_missing_subtests():
    r = pjd.parse_prove(OUTPUT, "chmod")
    assert [f.file for f in r.file_results] == ["chmod/00.t", "chmod/01.t", "chmod/02.t"]
    f00, f01, f02 = r.file_results
    assert (f00.planned, f00.ran, f00.failed) == (9, 9, 6)
    assert (f01.planned, f01.ran, f01.todo, f01.failed) == (3, 2, 1, 1)   # TODO passes; 1 never ran
    assert (f02.planned, f02.ran, f02.failed) == (None, 0, 0)
    assert (r.failed, r.total, r.files) == (7, 12, 3)
    assert (r.prove_tests, r.prove_result, r.status) == (11, "FAIL", "fail")
    assert [(f.subtest, f.line) for f in r.failures] == [(2, 25), (3, 26), (5, 31), (6, 33), (7, 40), (9, 42)]
    assert r.failures[0].message == f"tried 'mkfifo {D}/{A} 0644', expected 0, got ENOSYS"


def test_failures_that_follow_from_an_earlier_one():
    r = pjd.parse_prove(OUTPUT, "chmod")
    root = "mkfifo: got ENOSYS (expected 0)"
    causes = {f.subtest: f.cause for f in r.failures}
    assert causes[2] is None                 # the root
    assert causes[3] == root                 # the name it should have made is missing
    assert causes[5] == root                 # a symlink to it dangles
    assert causes[6] == root                 # the directory it should have filled is empty
    assert causes[7] is None                 # a real timestamp comparison
    assert causes[9] is None                 # name re-created by a passing subtest
    kinds = pjd.format_signatures([r])
    assert f"(follows from {root})" in kinds and "test_check -lt" in kinds


def test_signature_and_short_names():
    f = pjd.Failure("x/00.t", 1, 3, f"tried '-u 65534 -g 65534 open {A} O_RDONLY : fstat 0 inode', "
                                      "expected 1234567, got ESTALE")
    assert pjd.signature(f) == "open+fstat: got ESTALE (expected N)"
    assert pjd.short("mkdir " + "x" * 300 + " 0755") == "mkdir <300-char name> 0755"


def test_results_round_trip_through_json():
    r = pjd.parse_prove(OUTPUT, "chmod")
    doc = pjd.results_json([r], label="t")
    (back,) = pjd.results_from_json(doc)
    assert (back.failed, back.total) == (r.failed, r.total)
    assert [f.failed for f in back.file_results] == [f.failed for f in r.file_results]
    assert pjd.format_signatures([back]) == pjd.format_signatures([r])
