"""One run's state, handed to every step: the arguments, the endpoint (the latency proxy's
with --rtt), the boto3 clients, the bucket and dataset, the floors, the current mount."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from .common import StepFailed

if TYPE_CHECKING:
    from .peers import Fs, Mount
    from .s3 import S3
    from .servers import ProxyProc


@dataclass
class Ctx:
    args: argparse.Namespace
    endpoint: str
    server_kind: str
    s3: Optional[S3] = None         # straight to the server: set-up, durability polls, checks
    s3p: Optional[S3] = None        # through the latency proxy (if any): the boto3 limit rows
    direct_endpoint: str = ""       # the server itself; ``endpoint`` is the proxy with --rtt
    proxy: Optional["ProxyProc"] = None
    floors: dict = field(default_factory=dict)       # step name -> {"seconds", "doc"}
    floor_parts: dict = field(default_factory=dict)  # the request costs they are made of
    bucket: str = ""
    workdir: Path = Path()
    scale: dict = field(default_factory=dict)
    local_big: Path = Path()
    big_md5: str = ""
    mount_seq: int = 0
    active_mounts: list = field(default_factory=list)
    fs: Optional[Fs] = None
    mount: Optional[Mount] = None
    prepared: dict = field(default_factory=dict)  # per step scratch (e.g. expected md5s)

    @property
    def mnt(self) -> Path:
        return self.mount.mnt

    def poll_until(self, what: str, pred: Callable[[], bool], t0: float, timeout: float) -> float:
        """Poll pred until true; returns seconds since t0 at that moment."""
        while True:
            if pred():
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                raise StepFailed(f"not durable after {timeout:.0f}s: {what}")
            time.sleep(self.args.poll_interval)

