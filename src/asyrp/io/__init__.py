"""Files on disk: atomic writes and hashes (files), image datasets and LMDB (datasets, lmdb_writer), the weights
registry and its downloads (weights). Below the models and the pipeline; imports nothing above it."""
