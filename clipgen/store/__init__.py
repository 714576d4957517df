"""The versioned HDF5 activation store: schema, reader, writer, merge.

``clipgen extract`` writes stores; CKA, SAE, embedding and evaluation code reads them through
:func:`open_store` and never loads a model. See docs/extract.md for the schema. The resumable, sharded, versioned
HDF5 layer under the store (and under the circuits file) is :mod:`clipgen.store.kind`, with :mod:`clipgen.store.shards`
and the testing hooks of :mod:`clipgen.store.testing`.
"""

from clipgen.store.reader import ActivationStore, Samples, open_store
from clipgen.store.schema import FORMAT, SCHEMA_VERSION
from clipgen.store.writer import build_store_from_arrays

__all__ = ["FORMAT", "SCHEMA_VERSION", "ActivationStore", "Samples", "build_store_from_arrays", "open_store"]
