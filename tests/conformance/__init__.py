"""POSIX conformance tier: pjdfstest run on real mounts (see run_pjdfstest.py)."""
