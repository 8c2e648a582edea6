"""What every part of the peer benchmark shares: the repository root, sizes and seeds,
the two exceptions, the log line, and number formatting."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
KiB = 1 << 10
MiB = 1 << 20
ALL_FS = ["s3fuse", "s3fs", "rclone"]      # default set; "s3fuse-list" (meta=list), "s3fuse-wb" (writeback) on demand
PEERS_OF = "s3fuse"  # ratios are s3fuse / peer

SCALES = {
    # big: size of big.bin; many: number of ~1 KiB objects under many/;
    # nwrite: number of files in the untar / rm -rf / mv steps.
    "full": dict(big=256 * MiB, many=5000, nwrite=500),
    "small": dict(big=16 * MiB, many=300, nwrite=100),
}
RAW_THREADS = 8
RAW_PART = 8 * MiB
RANDOM_READS = 200
RANDOM_READ_SIZE = 4 * KiB
RANDOM_SEED = 20240601
CPOUT_PREFIX = "smallout/"     # the tree cp -r copies out (shared by every fs, read only)
FLOOR_MV_PREFIX = "floor-mv/"  # renamed once by the directory-rename floor


def log(msg: str = "") -> None:
    print(msg, flush=True)


class StepFailed(Exception):
    pass


class MountError(Exception):
    pass


def fmt_limit(v: dict) -> str:
    if "ms" in v:
        return f"{v['ms']:8.1f} ms" + " " * 12
    rate = f"  {v['MiB_per_s']:7.1f} MiB/s" if "MiB_per_s" in v else " " * 15
    return f"{fmt_s(v['seconds']):>8s} s{rate}"


def fmt_s(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 100 else f"{v:.1f}"


def size_name(n: int) -> str:
    return f"{n // MiB}MiB" if n >= MiB else f"{n // KiB}KiB"
