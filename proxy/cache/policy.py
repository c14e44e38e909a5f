"""What may be cached, for how long, and under which key (SPEC section 3).

Pure: decided from a parsed :class:`Resource`, never by string matching on paths.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace

from proxy.dicomweb.media import normalize_accept
from proxy.dicomweb.uri import Level, Resource, Transaction

# Query parameters that change a WADO-RS representation (PS3.18 8.3.3 and 10.4.1.1.3).
_WADO_PARAMS = frozenset({"accept", "transfer-syntax", "charset"})
_RENDERED_PARAMS = _WADO_PARAMS | {"window", "viewport", "quality", "annotation", "iccprofile"}


class Lifetime(enum.Enum):
    IMMUTABLE = "immutable"  # addressed by a SOP Instance UID
    STUDY = "study"  # study/series level: --metadata-ttl, revalidated, final later
    QIDO = "qido"  # --qido-ttl


@dataclass(frozen=True)
class Policy:
    """How one request is cached: its key (from ``parts``), lifetime and study."""

    parts: tuple[str, str, str, str, str]  # upstream, partition, path, Accept, params
    lifetime: Lifetime
    study: str | None

    @property
    def key(self) -> str:
        return "|".join(self.parts)

    @property
    def partition(self) -> str:
        return self.parts[1]

    def with_path(self, path: str) -> Policy:
        """The same representation of another resource (read-ahead of siblings)."""
        upstream, partition, _, accept, params = self.parts
        return replace(self, parts=(upstream, partition, path, accept, params))

    @property
    def tag(self) -> str | None:
        """diskcache tag: ``s:`` entries drop on STOW, ``i:`` only on purge."""
        if self.study is None:
            return None
        prefix = "i" if self.lifetime is Lifetime.IMMUTABLE else "s"
        return f"{prefix}:{self.study}"


def lifetime_of(resource: Resource, qido_ttl: float) -> Lifetime | None:
    if resource.transaction is Transaction.QIDO:
        return Lifetime.QIDO if qido_ttl > 0 else None
    if resource.transaction in {Transaction.STOW, Transaction.OTHER}:
        return None
    if resource.is_instance_addressed:
        return Lifetime.IMMUTABLE
    if resource.level in {Level.STUDY, Level.SERIES}:
        return Lifetime.STUDY
    return None


def decide(
    resource: Resource,
    *,
    path: str,
    query: Iterable[tuple[str, str]],
    accept: str | None,
    partition: str,
    upstream: str,
    qido_ttl: float,
) -> Policy | None:
    """The cache policy for a GET, or None when the response must not be cached."""
    lifetime = lifetime_of(resource, qido_ttl)
    if lifetime is None:
        return None
    params = "&".join(f"{k}={v}" for k, v in sorted(_key_params(resource, query)))
    parts = (upstream, partition, path, normalize_accept(accept), params)
    return Policy(parts=parts, lifetime=lifetime, study=resource.study)


def _key_params(resource: Resource, query: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """QIDO keys keep every parameter; WADO keys only those that change the bytes."""
    if resource.transaction is Transaction.QIDO:
        return list(query)
    wanted = _RENDERED_PARAMS if resource.is_rendered else _WADO_PARAMS
    return [(name.lower(), value) for name, value in query if name.lower() in wanted]
