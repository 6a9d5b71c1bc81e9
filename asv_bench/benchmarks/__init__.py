"""nbdl asv benchmarks: one module per op family; conventions in ``_common``."""
