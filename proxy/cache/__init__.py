"""The disk cache: policy (pure), store (diskcache + body files), fill, service, routes."""
