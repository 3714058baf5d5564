"""Data: reading the collection, ingest, validate, augment, and the tf.data input."""
