"""multiembed: batch embedding of Parquet data into versioned LanceDB tables, orchestrated by Prefect."""

__version__ = "0.1.0"

# Written into every embedding table's metadata and folded into every content hash: bump it when a
# change to the pipeline (not to a model) would change the vectors it produces.
PIPELINE_VERSION = "1"
