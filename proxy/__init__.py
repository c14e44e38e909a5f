"""dicomweb-proxy: a caching reverse proxy and Kubernetes sidecar for DICOMweb."""

__version__ = "0.1.0"
