"""What the tests, the benchmark and the demo share: a real Orthanc on the
configuration its Debian package ships, synthetic DICOM studies, loopback ports.

Nothing here imports from ``tests/``, ``bench/`` or ``demo/``.
"""
