"""Microsoft identity platform (login.microsoftonline.com) as MSAL's client-credentials flow sees it."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from simulators.server import Request, Response

GRAPH_AUDIENCE = "https://graph.microsoft.com"
ARM_AUDIENCE = "https://management.azure.com"
_AUDIENCES = {
    "https://graph.microsoft.com/.default": GRAPH_AUDIENCE,
    "https://management.azure.com/.default": ARM_AUDIENCE,
    "https://management.core.windows.net/.default": ARM_AUDIENCE,
}


@dataclass(frozen=True)
class IssuedToken:
    """What the simulator remembers about an access token it issued."""

    client_id: str
    tenant_id: str
    audience: str
    expires_at: float


@dataclass
class LoginService:
    """OpenID discovery, instance discovery and the v2.0 token endpoint for registered confidential clients."""

    base_url: str = ""  # set once the server knows its port
    clients: dict[str, str] = field(default_factory=dict)  # client_id -> client_secret
    tenants: set[str] = field(default_factory=set)
    token_lifetime: int = 3599
    tokens: dict[str, IssuedToken] = field(default_factory=dict)
    token_requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, tenant_id: str, client_id: str, client_secret: str) -> None:
        self.tenants.add(tenant_id)
        self.clients[client_id] = client_secret

    def authenticate(self, request: Request, audience: str) -> IssuedToken | Response:
        """Check a ``Bearer`` token; answer Graph's 401 shape when missing, unknown, expired or for another API."""
        header = request.header("Authorization") or ""
        scheme, _, token = header.partition(" ")
        issued = self.tokens.get(token) if scheme.lower() == "bearer" else None
        if issued is None or issued.expires_at < time.time():
            return _unauthorized("Access token is empty, unknown or expired.")
        if issued.audience != audience:
            return _unauthorized(f"Access token audience is not {audience}.")
        return issued

    def __call__(self, request: Request) -> Response | None:
        parts = [p for p in request.path.split("/") if p]
        if request.method == "GET" and parts[:2] == ["common", "discovery"]:
            return self._instance_discovery(request)
        if len(parts) >= 2 and parts[0] in self.tenants:
            tenant = parts[0]
            if request.method == "GET" and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
                return Response(200, self._openid_configuration(tenant))
            if request.method == "POST" and parts[1:] == ["oauth2", "v2.0", "token"]:
                return self._token(tenant, request)
        if len(parts) >= 2 and parts[1] in ("v2.0", "oauth2"):
            return Response(400, {"error": "invalid_tenant", "error_description": "AADSTS90002: Tenant not found."})
        return None

    def _openid_configuration(self, tenant: str) -> dict[str, object]:
        root = f"{self.base_url}/{tenant}"
        return {
            "token_endpoint": f"{root}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{root}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{root}/v2.0",
            "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
            "tenant_region_scope": "WW",
            "cloud_instance_name": "microsoftonline.com",
            "msgraph_host": "graph.microsoft.com",
        }

    def _instance_discovery(self, request: Request) -> Response:
        host = self.base_url.split("://", 1)[-1]
        return Response(
            200,
            {
                "tenant_discovery_endpoint": f"{self.base_url}/common/v2.0/.well-known/openid-configuration",
                "api-version": request.query_one("api-version", "1.1"),
                "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
            },
        )

    def _token(self, tenant: str, request: Request) -> Response:
        with self._lock:
            self.token_requests += 1
        form = dict(parse_qsl(request.body.decode()))
        if form.get("grant_type") != "client_credentials":
            return _aad_error(
                400, "unsupported_grant_type", "AADSTS70003: The app requested an unsupported grant type."
            )
        client_id = form.get("client_id", "")
        if client_id not in self.clients:
            return _aad_error(
                400, "unauthorized_client", f"AADSTS700016: Application with identifier '{client_id}' was not found."
            )
        if not secrets.compare_digest(form.get("client_secret", ""), self.clients[client_id]):
            return _aad_error(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
        scopes = form.get("scope", "").split()
        audience = next((_AUDIENCES[s] for s in scopes if s in _AUDIENCES), None)
        if audience is None:
            return _aad_error(400, "invalid_scope", "AADSTS70011: The provided value for scope is not valid.")
        token = "eyJ0eXAiOiJKV1QifQ." + secrets.token_urlsafe(32)
        self.tokens[token] = IssuedToken(client_id, tenant, audience, time.time() + self.token_lifetime)
        return Response(
            200,
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": token,
            },
        )


def _aad_error(status: int, error: str, description: str) -> Response:
    return Response(
        status,
        {
            "error": error,
            "error_description": description,
            "error_codes": [int(description[len("AADSTS") : description.index(":")])],
            "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
            "trace_id": secrets.token_hex(16),
            "correlation_id": secrets.token_hex(16),
        },
    )


def _unauthorized(message: str) -> Response:
    return Response(
        401,
        {
            "error": {
                "code": "InvalidAuthenticationToken",
                "message": message,
                "innerError": {"request-id": secrets.token_hex(16), "date": time.strftime("%Y-%m-%dT%H:%M:%S")},
            }
        },
        {"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'},
    )
