"""bench/fiojobs.py: the fio job files python3 -m bench.fio writes, the figure read out of
fio's JSON, and the tables (no fio, no mount, no server)."""
from __future__ import annotations

import configparser

import pytest

from bench import fiojobs   # the repository root is on sys.path (tests/ is a package)

SCALE = fiojobs.FIO_SCALES["full"]


def _ini(text: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(allow_no_value=True, interpolation=None)
    cp.read_string(text)
    return cp


@pytest.mark.parametrize("job", fiojobs.JOBS, ids=fiojobs.JOB_NAMES)
def test_job_file(job):
    cp = _ini(fiojobs.job_text(job, SCALE, "/mnt/x/target"))
    g = cp["global"]
    assert g["ioengine"] == ("filecreate" if job.rw == "filecreate" else "sync") and g["fallocate"] == "none"
    if job.rw == "filecreate":
        sections = [s for s in cp.sections() if s != "global"]
        assert len(sections) == SCALE["create_jobs"]
        assert cp["global"]["directory"] == "/mnt/x/target"
        assert cp["global"]["nrfiles"] == str(SCALE["create_files"])
        return
    sec = cp[job.name]
    assert sec["filename"] == "/mnt/x/target" and sec["rw"] == job.rw
    assert int(sec.get("numjobs", "1")) == job.numjobs
    if job.metric == "ms":
        assert sec["size"] == "1" and sec["direct"] == "1" and "time_based" not in g
    else:
        assert g["runtime"] == f"{SCALE['runtime']}s" and "time_based" in g
        want = SCALE[job.file] if job.file else SCALE["big"] * fiojobs.WRITE_SIZE_FACTOR
        assert int(sec["size"]) == want


def test_figures_from_fio_json():
    jobs = {j.name: j for j in fiojobs.JOBS}
    out = {"jobs": [{"error": 0, "read": {"bw": 512000, "io_bytes": 4000 << 20, "runtime": 8000,
                                          "lat_ns": {"mean": 2.5e6, "max": 9e6}, "total_ios": 10},
                     "write": {"bw": 102400, "io_bytes": 800 << 20, "runtime": 8000}}]}
    assert fiojobs.figure(jobs["seq_read_4t"], SCALE, out, 8.2)["value"] == pytest.approx(500.0)
    w = fiojobs.figure(jobs["seq_write"], SCALE, out, 10.0)
    assert w["value"] == pytest.approx(100.0) and w["with_close_mib_s"] == pytest.approx(80.0)
    assert fiojobs.figure(jobs["ttfb_small"], SCALE, out, 1.0)["value"] == pytest.approx(2.5)
    assert fiojobs.figure(jobs["create_files"], SCALE, out, 4.0)["value"] == pytest.approx(250.0)
    with pytest.raises(ValueError):
        fiojobs.figure(jobs["seq_read"], SCALE, {"jobs": [{"error": 5}]}, 1.0)


def test_tables_ratios_and_failures():
    jobs = fiojobs.select(["seq_read", "create"])
    assert [j.name for j in jobs] == ["seq_read", "create_files"]
    res = {"seq_read": {"s3fuse": {"value": 300.0, "peak_rss_mib": 80.0, "cpu_s": 4.0},
                        "s3fs": {"value": 600.0, "peak_rss_mib": 10.0, "cpu_s": 1.0},
                        "rclone": {"error": "fio rc=1: boom", "peak_rss_mib": 50.0, "cpu_s": 0.5}},
           "create_files": {"s3fuse": {"value": 200.0}, "s3fs": {"value": 50.0}, "rclone": {"skipped": "absent"}}}
    floors = {"seq_read": {"value": 150.0}, "create_files": {"value": 400.0}}
    lines = fiojobs.tables(jobs, SCALE, ["s3fuse", "s3fs", "rclone"], res, floors)
    text = "\n".join(lines)
    row = next(l for l in lines if l.startswith("seq_read "))
    assert row.split()[-6:] == ["300", "600", "FAIL", "150", "0.50", "2.00"]
    create = next(l for l in lines if l.startswith("create_1000"))
    assert create.split()[-5:] == ["50", "skip", "400", "4.00", "0.50"]
    assert "80 / 4.0" in text and "10 / 1.0" in text
    assert "seq_read rclone: fio rc=1: boom" in text
