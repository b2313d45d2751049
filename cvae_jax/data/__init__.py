"""Data sources: each model's loader (dance, pushing), the folder and TFDS readers, the synthetic generators."""
