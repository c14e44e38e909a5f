"""The pure DICOMweb domain (PS3.18): no server imports below this package."""
