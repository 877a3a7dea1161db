"""bbolt database files, written and read in Python (the layout etcd's backend uses).

``writer`` builds a file from sorted key/value streams, page by page, without holding the
data in memory; ``reader`` walks one, checking every page it touches. The on-disk layout
is described in docs/bbolt-format.md and in ``layout``.
"""

from datastore.bbolt.layout import BoltError
from datastore.bbolt.reader import BoltReader
from datastore.bbolt.writer import BoltWriter, BucketBuilder

__all__ = ["BoltError", "BoltReader", "BoltWriter", "BucketBuilder"]
