"""``make demo``: a local Orthanc (or ``UPSTREAM``), the OHIF viewer and the proxy."""
