"""Layer 2, inputs and outputs: local paths and s3:// URIs, images, checkpoints and result files.

Storage (reads, listings, atomic and conditional writes), S3 Inventory, the output's lease, the
error log, image decoding (CPU and GPU), what to score, labelled data, the Parquet result schemas
and expert checkpoints. No Ray.
"""
