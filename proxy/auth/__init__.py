"""Authentication (SPEC section 4): who may use the proxy, and how it signs in upstream.

::

    watched.py      WatchedFile: a small secret/config file re-read when it changes
    inbound.py      client -> proxy: htpasswd Basic or static bearer tokens (a middleware)
    credentials.py  proxy -> upstream: the Credentials protocol, Basic and bearer providers
    tokens.py       a bearer token cached and refreshed in a single flight
    oauth2.py       OAuth2 client-credentials tokens (RFC 6749 4.4) from a token endpoint
    azure.py        Entra ID tokens (secret, workload identity, managed identity) via oauth2
    google.py       Cloud Healthcare tokens from google-auth (key file, metadata server)
    aws.py          SigV4 signing of every request with botocore's credential chain
    sigv4.py        the signing of one request: payload hash, canonical query, headers
    partition.py    the cache partition of a request (per credential with passthrough)
    config.py       Settings -> the objects above; start-up validation naming the option

Dependencies point one way: ``config`` imports the rest; nothing here imports the app.
google-auth and botocore (optional extras) are imported only when their mode is built.
No secret is ever logged, put in an exception message or shown by a ``repr``.
"""

from __future__ import annotations

from proxy.auth.config import credentials_from, inbound_from, partitioner_from, validate
from proxy.auth.credentials import Credentials
from proxy.auth.inbound import inbound_middleware
from proxy.auth.partition import SHARED, Partitioner, partition

__all__ = [
    "SHARED",
    "Credentials",
    "Partitioner",
    "credentials_from",
    "inbound_from",
    "inbound_middleware",
    "partition",
    "partitioner_from",
    "validate",
]
