"""Benchmarks of s3fuse, run from the repository root (see bench/README.md):

- ``python3 -m bench``: the peer benchmark, s3fuse vs s3fs-fuse vs rclone mount
  (cli: flags and the run; peers: the filesystems and their mounts; steps: what is timed;
  dataset, limits + floors: the boto3 set-up and the rows under the table; servers:
  RGW, moto, the latency proxy; run: one filesystem's pass; report: table and JSON;
  child: the mountpoint I/O in a killable child process);
- ``python3 -m bench.fio``: mountpoint-s3's fio jobs on the same peers, with a floor row;
- ``python3 -m bench.bigdir``: one directory of 100,000 objects (listings, daemon memory);
- ``python3 -m bench.chart``: charts and markdown tables of a ``--json`` result;
- ``python3 -m bench.edit``: edits of a large object, bytes each filesystem moves;
- ``python3 -m bench.transport``: the transport candidates, per request;
- ``python3 -m bench.latency_proxy``: the RTT proxy (``--rtt``) on its own.
"""
