"""Mapping between mount paths and object keys.

A mount of ``bucket:/some/prefix`` maps path ``/a/b`` to key ``some/prefix/a/b``.
Directory keys end with ``/``.  Names that cannot be path components (empty, ``.``,
``..``, longer than 255 bytes, containing NUL, not UTF-8) are rejected here; listings skip keys
holding them (with a log line) instead of exposing wrong paths.
"""
NAME_MAX = 255


def normalize_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return prefix + "/" if prefix else ""


def is_utf8(name: str) -> bool:
    """Names come from the kernel as bytes decoded with surrogateescape: a name that is
    not UTF-8 holds surrogates and cannot be an S3 key."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def valid_name(name: str) -> bool:
    return (bool(name) and name not in (".", "..") and "\0" not in name and "/" not in name
            and len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX)


class KeyMapper:
    def __init__(self, prefix: str = ""):
        self.prefix = normalize_prefix(prefix)

    def key(self, path: str) -> str:
        """Object key of a file path ('/a/b' -> 'prefix/a/b')."""
        return self.prefix + path.lstrip("/")

    def dir_prefix(self, path: str) -> str:
        """Key prefix of a directory path ('/' -> 'prefix/', '/a' -> 'prefix/a/')."""
        rel = path.strip("/")
        return self.prefix + (rel + "/" if rel else "")

    def path(self, key: str) -> str:
        """Path of a key below the mount prefix ('prefix/a/b' or 'prefix/a/b/' -> '/a/b')."""
        return "/" + key[len(self.prefix):].rstrip("/")


def split(path: str):
    """'/a/b/c' -> ('/a/b', 'c'); '/a' -> ('/', 'a')."""
    parent, _, name = path.rstrip("/").rpartition("/")
    return (parent or "/"), name


def join(parent: str, name: str) -> str:
    return parent.rstrip("/") + "/" + name
