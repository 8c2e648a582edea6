"""s3fuse: mount an S3 bucket as a POSIX-ish filesystem."""

__version__ = "0.1.0"
