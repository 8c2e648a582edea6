"""The FUSE adapter: the binding (mfusepy/fusepy plus ctypes-level overrides), the
Operations class mapping FUSE calls onto ``fs.Filesystem``, and the one place an
exception becomes an errno (``boundary``)."""
