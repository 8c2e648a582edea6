"""The S3 client layer: everything s3fuse asks of S3 (``ObjectClient``), the only
package that imports boto3/botocore.  Nothing here knows of files or FUSE."""
from .client import ObjectClient

__all__ = ["ObjectClient"]
