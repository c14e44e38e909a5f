"""In-process emulators of what each cloud checks (no cloud is reachable from here).

- :func:`serve_study`: the fake upstream (tests/fake_upstream.py) made a DICOMweb
  archive (QIDO, WADO instance, STOW) that admits a request only when the cloud's
  check says so; it records what it received.
- Google: :class:`GoogleTokenEndpoint` verifies the RS256 JWT assertion of a generated
  service-account key (:func:`service_account_key`) and its scope;
  :class:`GoogleMetadataServer` requires ``Metadata-Flavor: Google``.
- Azure: :class:`EntraEndpoint` checks tenant, client, resource scope and the client
  secret or the federated assertion; it also serves IMDS (``Metadata: true``).
- AWS: :class:`SigV4Checker` recomputes every request's signature with botocore from
  the same credentials, the way the service canonicalises it; :class:`AwsCredentialsEndpoint`
  is the EKS Pod Identity / ECS container credentials endpoint.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from yarl import URL

from harness.dicomgen import Study
from tests.fake_upstream import (
    DICOM_JSON,
    Answer,
    Check,
    FakeUpstream,
    Received,
    multipart_answer,
    stow_success,
)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# -- the archive -------------------------------------------------------------------------


def serve_study(fake: FakeUpstream, study: Study, check: Check, refusal: int = 401) -> None:
    """``fake`` answers QIDO ``/studies``, WADO ``.../instances/{sop}`` and STOW ``POST
    /studies`` under any base path, for the requests ``check`` admits; ``refusal`` is
    the status of a refused one."""
    fake.check, fake.refusal = check, refusal
    found = json.dumps([{"0020000D": {"vr": "UI", "Value": [study.uid]}}])
    fake.route("GET", "{base:.*}/studies", Answer(body=found, headers=DICOM_JSON))
    instances = {sop: data for _, sop, data in study.instances}

    def instance(received: Received) -> Answer:
        data = instances.get(received.params["sop"])
        return Answer(404) if data is None else multipart_answer(data)

    fake.route("GET", "{base:.*}/instances/{sop:[0-9.]+}", instance)
    fake.route("POST", "{base:.*}/studies", stow_success)


@dataclass
class Issuer:
    """Tokens handed out by an emulated identity service; a test may revoke them all."""

    live: set[str] = field(default_factory=set)
    issued: list[str] = field(default_factory=list)

    def issue(self, prefix: str) -> str:
        token = prefix + secrets.token_hex(16)
        self.live.add(token)
        self.issued.append(token)
        return token

    def bearer_check(self, received: Received) -> str | None:
        scheme, _, token = received.headers.get("Authorization", "").partition(" ")
        return None if scheme == "Bearer" and token in self.live else "not a live token"


# -- Google ------------------------------------------------------------------------------


def service_account_key(path: Path, token_uri: str) -> tuple[dict[str, str], bytes]:
    """A generated service-account key file (the format the IAM API downloads); returns
    its content and the public key in PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = {
        "type": "service_account",
        "project_id": "dicom-project",
        "private_key_id": secrets.token_hex(20),
        "private_key": private,
        "client_email": "dicomweb-proxy@dicom-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(info))
    return info, public


class GoogleTokenEndpoint:
    """``oauth2.googleapis.com/token`` for the JWT bearer grant (RFC 7523 section 2.1):
    the assertion must verify with the key's public half and name the key's account as
    issuer, Google's token endpoint as audience (google-auth sends that audience
    whatever the key's ``token_uri``), and the expected scope."""

    GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    AUDIENCE = "https://oauth2.googleapis.com/token"

    def __init__(self, public_key: bytes, email: str, scope: str, lifetime: int = 3600) -> None:
        self.public_key = public_key
        self.email = email
        self.scope = scope
        self.lifetime = lifetime
        self.url = ""
        self.delay = 0.0
        self.calls = 0
        self.assertions: list[str] = []
        self.tokens = Issuer()
        self.app = web.Application()
        self.app.router.add_post("/token", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        from google.auth import jwt

        self.calls += 1
        form = await request.post()
        if self.delay:
            await asyncio.sleep(self.delay)  # the refresh is still in flight for the others
        assertion = str(form.get("assertion", ""))
        self.assertions.append(assertion)
        if form.get("grant_type") != self.GRANT:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            claims = jwt.decode(assertion, certs=self.public_key, audience=self.AUDIENCE)
        except ValueError:
            return web.json_response(
                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
                status=400,
            )
        if claims.get("iss") != self.email or claims.get("scope") != self.scope:
            return web.json_response({"error": "invalid_scope"}, status=400)
        token = self.tokens.issue("ya29.")
        return web.json_response(
            {"access_token": token, "expires_in": self.lifetime, "token_type": "Bearer"}
        )


class GoogleMetadataServer:
    """The GCE / GKE metadata server's token path; requires ``Metadata-Flavor: Google``
    (without it, it refuses, as the real one does)."""

    def __init__(self, lifetime: int = 3600) -> None:
        self.lifetime = lifetime
        self.calls = 0
        self.scopes: list[str] = []
        self.tokens = Issuer()
        self.app = web.Application()
        self.app.router.add_get("/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403, text="Missing Metadata-Flavor:Google header.")
        headers = {"Metadata-Flavor": "Google"}
        path = request.path
        if path.endswith("/instance/service-accounts/default/token"):
            self.calls += 1
            self.scopes.append(request.query.get("scopes", ""))
            token = self.tokens.issue("ya29.md-")
            document = {"access_token": token, "expires_in": self.lifetime, "token_type": "Bearer"}
            return web.json_response(document, headers=headers)
        if path.endswith("/instance/service-accounts/default/"):
            info = {"email": "node@dicom-project.iam.gserviceaccount.com", "aliases": ["default"]}
            return web.json_response({**info, "scopes": []}, headers=headers)
        return web.Response(status=404, headers=headers)


# -- Azure -------------------------------------------------------------------------------


class EntraEndpoint:
    """Entra ID's v2 token endpoint for one tenant and app, and IMDS on the same port."""

    RESOURCE = "https://dicom.healthcareapis.azure.com"
    ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

    def __init__(self, tenant: str, client: str, secret: str = "", assertion: str = "") -> None:
        self.tenant = tenant
        self.client = client
        self.secret = secret
        self.assertion = assertion  # the federated token it currently accepts
        self.url = ""  # its base URL (the authority host), set by whoever starts it
        self.lifetime = 3600
        self.delay = 0.0
        self.calls = 0
        self.forms: list[dict[str, str]] = []
        self.imds_queries: list[dict[str, str]] = []
        self.tokens = Issuer()
        self.app = web.Application()
        self.app.router.add_post("/{tenant}/oauth2/v2.0/token", self.token)
        self.app.router.add_get("/metadata/identity/oauth2/token", self.imds)

    async def token(self, request: web.Request) -> web.Response:
        self.calls += 1
        form = {key: str(value) for key, value in (await request.post()).items()}
        self.forms.append(form)
        if self.delay:
            await asyncio.sleep(self.delay)
        refusal = self._refusal(request.match_info["tenant"], form)
        if refusal:
            return web.json_response({"error": refusal, "error_codes": [7000215]}, status=401)
        return self._issued(self.tokens.issue("eyJ0eXAi."))

    def _refusal(self, tenant: str, form: dict[str, str]) -> str | None:
        if tenant != self.tenant or form.get("client_id") != self.client:
            return "unauthorized_client"
        if form.get("grant_type") != "client_credentials":
            return "unsupported_grant_type"
        if form.get("scope") != self.RESOURCE + "/.default":
            return "invalid_scope"
        if "client_assertion" in form:
            ok = form.get("client_assertion_type") == self.ASSERTION_TYPE
            return (
                None if ok and _same(form["client_assertion"], self.assertion) else "invalid_client"
            )
        return None if _same(form.get("client_secret", ""), self.secret) else "invalid_client"

    async def imds(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.imds_queries.append(dict(request.query))
        if request.headers.get("Metadata") != "true":
            return web.json_response({"error": "invalid_request"}, status=400)
        if request.query.get("resource") != self.RESOURCE or "api-version" not in request.query:
            return web.json_response({"error": "invalid_resource"}, status=400)
        # IMDS sends expires_in as a string.
        return self._issued(self.tokens.issue("eyJ0eXAi.mi-"), str(self.lifetime))

    def _issued(self, token: str, lifetime: object = None) -> web.Response:
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": lifetime if lifetime is not None else self.lifetime,
                "access_token": token,
            }
        )


def _same(given: str, expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


# -- AWS ---------------------------------------------------------------------------------


@dataclass
class AwsKey:
    access_key: str
    secret_key: str
    token: str | None = None


class SigV4Checker:
    """What AWS checks on every request: the SigV4 signature recomputed with botocore
    from the same credentials, after canonicalising the query as the service does
    (decode, then encode all but RFC 3986 unreserved); the credential scope (region,
    service ``medical-imaging``), a date within 5 minutes, every ``x-amz-*`` header
    signed, the session token, and ``x-amz-content-sha256`` against the body."""

    def __init__(self, region: str, service: str = "medical-imaging") -> None:
        self.region = region
        self.service = service
        self.keys: dict[str, AwsKey] = {}
        self.skew = datetime.timedelta(0)  # the service's clock against ours
        self.verified = 0

    def allow(self, key: AwsKey) -> None:
        self.keys[key.access_key] = key

    def __call__(self, received: Received) -> str | None:
        match = re.fullmatch(
            r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
            r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
            received.headers.get("Authorization", ""),
        )
        if match is None:
            return "missing or malformed SigV4 Authorization"
        access_key, day, region, service, signed, signature = match.groups()
        key = self.keys.get(access_key)
        why = self._scope(key, day, region, service, received, signed.split(";"))
        if why:
            return why
        assert key is not None
        if not hmac.compare_digest(self._signature(key, received, signed.split(";")), signature):
            return "SignatureDoesNotMatch"
        self.verified += 1
        return None

    def _scope(
        self,
        key: AwsKey | None,
        day: str,
        region: str,
        service: str,
        received: Received,
        signed: list[str],
    ) -> str | None:
        headers = received.headers
        if key is None:
            return "UnrecognizedClientException: unknown access key"
        if (region, service) != (self.region, self.service):
            return "credential scope names another region or service"
        when = datetime.datetime.strptime(headers.get("X-Amz-Date", ""), "%Y%m%dT%H%M%SZ")
        when = when.replace(tzinfo=datetime.UTC)
        if abs(_now() + self.skew - when) > datetime.timedelta(minutes=5) or day != when.strftime(
            "%Y%m%d"
        ):
            return "Signature expired"
        unsigned = [
            n.lower() for n in headers if n.lower().startswith("x-amz-") and n.lower() not in signed
        ]
        if unsigned or "host" not in signed:
            return "a header that must be signed is not"
        if key.token is not None and headers.get("X-Amz-Security-Token") != key.token:
            return "the security token is missing or not this key's"
        claimed = headers.get("X-Amz-Content-SHA256")
        if claimed is not None and claimed != hashlib.sha256(received.body).hexdigest():
            return "x-amz-content-sha256 does not match the body"
        return None

    def _signature(self, key: AwsKey, received: Received, signed: list[str]) -> str:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import ReadOnlyCredentials

        target = URL(received.path_qs, encoded=True)

        params = [
            (unquote(k), unquote(v))
            for k, _, v in (
                pair.partition("=") for pair in target.raw_query_string.split("&") if pair
            )
        ]
        headers = {name: ",".join(received.headers.getall(name)) for name in signed}
        url = f"http://{received.headers['Host']}{target.raw_path}"
        aws_request = AWSRequest(
            method=received.method, url=url, headers=headers, data=received.body
        )
        aws_request.params = params
        aws_request.context["timestamp"] = received.headers["X-Amz-Date"]
        auth = SigV4Auth(
            ReadOnlyCredentials(key.access_key, key.secret_key, key.token),
            self.service,
            self.region,
        )
        canonical = auth.canonical_request(aws_request)
        result: str = auth.signature(auth.string_to_sign(aws_request, canonical), aws_request)
        return result


class AwsCredentialsEndpoint:
    """The container credentials endpoint (EKS Pod Identity agent, ECS): requires the
    ``Authorization`` read from AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, hands out a new
    temporary key with a session token on every call."""

    def __init__(self, authorization: str, checker: SigV4Checker, lifetime: float = 3600) -> None:
        self.authorization = authorization
        self.checker = checker
        self.lifetime = lifetime
        self.delay = 0.0
        self.calls = 0
        self.issued: list[AwsKey] = []
        self.app = web.Application()
        self.app.router.add_get("/credentials", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if not _same(request.headers.get("Authorization", ""), self.authorization):
            return web.json_response({"message": "unauthorized"}, status=401)
        key = AwsKey(
            "ASIA" + secrets.token_hex(8).upper(),
            secrets.token_urlsafe(30),
            "IQoJb3JpZ2luX2Vj" + secrets.token_urlsafe(40),
        )
        self.issued.append(key)
        self.checker.allow(key)
        expiration = _now() + datetime.timedelta(seconds=self.lifetime)
        document: dict[str, Any] = {
            "AccessKeyId": key.access_key,
            "SecretAccessKey": key.secret_key,
            "Token": key.token,
            "Expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        return web.json_response(document)

    def secrets(self) -> set[str]:
        return {part for key in self.issued for part in (key.secret_key, key.token or "")}
