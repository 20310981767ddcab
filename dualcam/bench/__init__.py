"""Measurement scripts (``make bench``, ``make scale``, ``make precision``, ``make gpu-check``) and
the helpers they share with the tests (a moto S3 server, sample experts and X-rays).

Nothing in the library imports this package: it may import any layer, and test-only packages
(moto) that ``import dualcam`` must not.
"""
