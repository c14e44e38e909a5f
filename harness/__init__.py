"""What the tests, the benchmark and the demo share: a real Orthanc on the
configuration its Debian package ships, synthetic DICOM studies, loopback ports; and the
generator of the configuration reference (``python -m harness.configref``).

Nothing here imports from ``tests/``, ``bench/`` or ``demo/``.
"""
