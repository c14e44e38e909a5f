"""``--upstream-auth aws``: AWS HealthImaging DICOMweb, every request SigV4-signed.

Signature Version 4 (AWS IAM User Guide, "Create a signed AWS API request"), service
``medical-imaging``, in the region of ``--aws-region``; signing and the credential chain
are ``botocore``'s (the ``[aws]`` extra): environment, shared config/credentials files,
IRSA web identity, the container endpoint of EKS Pod Identity and ECS, instance
metadata.  The chain is resolved in a worker thread (its providers block), once for all
concurrent requests, and temporary credentials are refreshed in a thread when botocore
says they are inside its refresh window (15 minutes before they expire).

Every request is signed just before it is sent (:mod:`proxy.auth.sigv4`).

A 403 (an expired signature or session token) makes the provider resolve the chain
again, and the request is signed and sent once more.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

from proxy.auth.credentials import Credentials, Outgoing
from proxy.auth.sigv4 import SERVICE, canonical_url, payload_hash, sign
from proxy.auth.tokens import RENEW_BACKOFF
from proxy.errors import UpstreamAuthFailed
from proxy.settings import Settings, SettingsError

log = logging.getLogger("dicomweb_proxy.auth")

EXTRA = "pip install 'dicomweb-proxy[aws]'"
# "These actions support upload of up to 1GB of DICOM data per request" (HealthImaging
# Developer Guide, Importing data); read as the smaller decimal gigabyte.
MAX_REQUEST_BYTES = 1000**3
# A refused signature made longer ago than this is worth making again with a fresh
# date (SigV4 signatures are valid for 5 minutes; a request may wait for a connection).
RESIGN_AFTER = 60.0
_HOST = re.compile(r"^dicom-medical-imaging\.([a-z0-9-]+)\.amazonaws\.com$")
_MESSAGE = re.compile(r"^[\x20-\x7e]{1,300}$")
# botocore logs canonical requests (session token included) and response bodies
# (secret keys from STS) at DEBUG; never let them through.
_LIBRARY_LOGGERS = ("botocore",)
# botocore's name of each credential source -> what ``check`` says.
SOURCES = {
    "env": "the environment (AWS_ACCESS_KEY_ID)",
    "shared-credentials-file": "the shared credentials file",
    "config-file": "the shared config file",
    "custom-process": "a credential_process",
    "assume-role": "an assumed role (profile role_arn)",
    "assume-role-with-web-identity": "web identity (IRSA: AWS_WEB_IDENTITY_TOKEN_FILE)",
    "sso": "IAM Identity Center (SSO)",
    "container-role": "the container credentials endpoint (EKS Pod Identity, ECS)",
    "iam-role": "instance metadata (IMDS)",
}


def credentials_from(
    settings: Settings, clock: Callable[[], float] = time.monotonic
) -> AwsCredentials:
    """The provider for ``settings``; SettingsError names the option at fault.  Nothing
    here reaches the network: the chain is resolved on first use."""
    session_class = _sdk()
    if settings.stow_max_bytes > MAX_REQUEST_BYTES:
        raise SettingsError(
            f"--stow-max-bytes: at most {MAX_REQUEST_BYTES} bytes (1 GB, AWS HealthImaging's "
            "limit per STOW request) with --upstream-auth aws"
        )
    region = _region(settings, session_class)
    _quiet_library_logs()
    return AwsCredentials(region, lambda: session_class().get_credentials(), clock=clock)


def _sdk() -> Any:
    try:
        import botocore.auth
        import botocore.awsrequest
        import botocore.credentials
        import botocore.session
    except ImportError:
        raise SettingsError(
            f"--upstream-auth aws: the botocore library is not installed ({EXTRA})"
        ) from None
    return botocore.session.Session


def _region(settings: Settings, session_class: Any) -> str:
    """``--aws-region``, else the AWS config (AWS_REGION, the profile), else the host of
    a HealthImaging URL; a region the URL contradicts would sign every request wrong."""
    host = URL(settings.upstream_url).host or ""
    match = _HOST.match(host)
    in_url = match.group(1) if match else None
    region = settings.aws_region or session_class().get_config_variable("region") or in_url
    if not region:
        raise SettingsError(
            "--aws-region: required with --upstream-auth aws (or AWS_REGION, or a "
            "dicom-medical-imaging.REGION.amazonaws.com upstream URL)"
        )
    if in_url and region != in_url:
        raise SettingsError(f"--aws-region: {region}, but the upstream URL is in {in_url}")
    return str(region)


def _quiet_library_logs() -> None:
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.INFO))


@dataclass(frozen=True)
class Frozen:
    """One set of credentials, as botocore froze them; ``repr`` shows no secret."""

    sdk: Any = field(repr=False)  # botocore ReadOnlyCredentials
    method: str

    @property
    def fingerprint(self) -> str:
        """Tells two sets apart in :meth:`AwsCredentials.renew`; not reversible."""
        parts = (self.sdk.access_key, self.sdk.secret_key, self.sdk.token or "")
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


class AwsCredentials(Credentials):
    def __init__(
        self,
        region: str,
        resolve: Callable[[], Any],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.region = region
        self._resolve = resolve  # blocking: botocore's chain, None when it finds nothing
        self._clock = clock
        self._sdk_credentials: Any = None
        self._frozen: Frozen | None = None
        self._flight: asyncio.Task[Frozen] | None = None
        self._renewed_at = -RENEW_BACKOFF
        self.fetches = 0

    def __repr__(self) -> str:
        return f"AwsCredentials(region={self.region!r}, frozen={self._frozen!r})"

    def describe(self) -> str:
        return f"aws sigv4 for {SERVICE} in {self.region}"

    def refused(self, status: int) -> bool:
        """AWS answers 403 to a signature it refuses (expired, wrong) or an expired
        session token; 401 is kept for gateways in front of it."""
        return status in (401, 403)

    async def ready(self) -> str:
        frozen = await self._current()
        return f"{self.describe()}, credentials from {_source(frozen.method)}"

    async def apply(self, request: Outgoing) -> str:
        frozen = await self._current()
        payload = await payload_hash(request.body)
        request.url = canonical_url(request.url)
        sign(frozen.sdk, self.region, request, payload)
        return f"{frozen.fingerprint} {self._clock()}"

    async def renew(self, rejected: str) -> bool:
        """One new resolution per refused set, shared by every request it was refused to."""
        fingerprint, _, signed_at = rejected.partition(" ")
        if self._flight is not None and not self._flight.done():
            await self._refreshed(again=False)
            return True
        current = self._frozen
        if current is not None and current.fingerprint != fingerprint:
            return True  # already replaced since that request went out
        if self._clock() - self._renewed_at < RENEW_BACKOFF:
            return False
        self._renewed_at = self._clock()
        log.warning("the upstream refused the SigV4 signature; resolving AWS credentials again")
        fresh = await self._refreshed(again=True)
        stale = self._clock() - float(signed_at or 0) > RESIGN_AFTER
        return fresh.fingerprint != fingerprint or stale

    async def close(self) -> None:
        if self._flight is not None and not self._flight.done():
            self._flight.cancel()

    # -- single flight ---------------------------------------------------------------

    async def _current(self) -> Frozen:
        frozen, sdk = self._frozen, self._sdk_credentials
        if frozen is None or (hasattr(sdk, "refresh_needed") and sdk.refresh_needed()):
            return await self._refreshed(again=False)
        return frozen

    async def _refreshed(self, *, again: bool) -> Frozen:
        """Join the refresh in flight, or start one (shielded, as in TokenCredentials)."""
        if self._flight is None or self._flight.done():
            self._flight = asyncio.get_running_loop().create_task(self._fetch(again))
            self._flight.add_done_callback(_retrieve_exception)
        return await asyncio.shield(self._flight)

    async def _fetch(self, again: bool) -> Frozen:
        self.fetches += 1
        frozen = await asyncio.to_thread(self._freeze, again)
        self._frozen = frozen
        log.info("%s: credentials from %s", self.describe(), _source(frozen.method))
        return frozen

    def _freeze(self, again: bool) -> Frozen:
        """Blocking: resolve the chain (first time, or ``again``), then freeze; botocore
        refreshes temporary credentials here when they are due."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            if again or self._sdk_credentials is None:
                self._sdk_credentials = self._resolve()
            if self._sdk_credentials is None:
                raise UpstreamAuthFailed(
                    "no AWS credentials found (environment, shared files, web identity, "
                    "container endpoint, instance metadata)"
                )
            frozen = self._sdk_credentials.get_frozen_credentials()
        except (BotoCoreError, ClientError, ValueError, OSError) as exc:
            raise UpstreamAuthFailed(f"AWS credentials: {_message(exc)}") from None
        return Frozen(frozen, str(getattr(self._sdk_credentials, "method", "")))


def _source(method: str) -> str:
    return SOURCES.get(method, method or "an unnamed source")


def _message(exc: BaseException) -> str:
    """botocore's message when it is one short printable line, else the class name."""
    text = str(exc).splitlines()[0].strip() if str(exc).strip() else ""
    return text if _MESSAGE.match(text) else type(exc).__name__


def _retrieve_exception(task: asyncio.Task[Frozen]) -> None:
    if not task.cancelled():
        task.exception()
