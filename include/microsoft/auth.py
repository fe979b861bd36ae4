"""Client-credentials tokens from Microsoft Entra ID through MSAL (the transport's ``BearerAuth`` sends them)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

import msal
import requests

from include.pipeline.errors import PermanentError

log = logging.getLogger(__name__)

MICROSOFT_AUTHORITY_HOST = "https://login.microsoftonline.com"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
ARM_SCOPE = "https://management.azure.com/.default"
PUBLIC_ARM_HOST = "https://management.azure.com"
#: Azure Resource Manager of the sovereign clouds, by their login host. Sentinel's upload API and its management
#: plane both take a token for the cloud's ARM: ``https://management.usgovcloudapi.net/.default`` in US Government
#: (upload host ``api.ti.sentinel.azure.us``), ``https://management.chinacloudapi.cn/.default`` in China.
SOVEREIGN_ARM_HOSTS = {
    "login.microsoftonline.us": "https://management.usgovcloudapi.net",
    "login.chinacloudapi.cn": "https://management.chinacloudapi.cn",
}
_MICROSOFT_LOGIN_HOSTS = {
    "login.microsoftonline.com",
    "login.microsoft.com",
    "login.windows.net",
    "sts.windows.net",
    "login.microsoftonline.us",
    "login.chinacloudapi.cn",
}


class TokenError(RuntimeError):
    """The identity platform did not issue a token."""


class TokenRefused(TokenError, PermanentError):
    """The identity platform refused the request (bad secret, unknown client or tenant, wrong scope): no retry
    fixes it; the message carries Entra's ``AADSTS`` code."""


#: OAuth error codes that may pass on a later try; every other refusal is the caller's configuration.
TRANSIENT_TOKEN_ERRORS = frozenset({"temporarily_unavailable", "server_error", "slow_down"})


def arm_host(authority_host: str) -> str:
    """The Azure Resource Manager of the cloud whose login host is ``authority_host`` (public Azure otherwise)."""
    return SOVEREIGN_ARM_HOSTS.get(urlsplit(authority_host).hostname or "", PUBLIC_ARM_HOST)


def is_microsoft_authority(authority_host: str) -> bool:
    """True for Microsoft's own login hosts, where MSAL's instance discovery is meaningful."""
    return (urlsplit(authority_host).hostname or "") in _MICROSOFT_LOGIN_HOSTS


class TokenProvider:
    """Acquire (and cache, per provider) an app-only token for one scope with MSAL client credentials.

    MSAL keeps the token in memory and answers from its cache while more than five minutes of validity remain,
    so one provider per task run costs one token request per run.
    """

    def __init__(
        self,
        tenant_id: str,
        client_id: str,
        client_secret: str,
        scope: str,
        authority_host: str = MICROSOFT_AUTHORITY_HOST,
        http_client: requests.Session | None = None,
        on_new_token: Callable[[str], None] | None = None,
    ) -> None:
        """``on_new_token`` is told every token the identity platform issues (the hooks register it with
        Airflow's secrets masker, so no log line can show it)."""
        if not tenant_id or not client_id or not client_secret:
            raise ValueError("tenant_id, client_id and client_secret are all required")
        self._scope = scope
        self._authority = f"{authority_host.rstrip('/')}/{tenant_id}"
        self._client_id = client_id
        self._client_secret = client_secret
        self._http_client = http_client
        self._on_new_token = on_new_token
        self._app: msal.ConfidentialClientApplication | None = None
        self._lock = threading.Lock()

    def _application(self) -> msal.ConfidentialClientApplication:
        # MSAL fetches OpenID metadata in its constructor: build it lazily, never at DAG-parse time.
        if self._app is None:
            kwargs: dict[str, object] = {}
            if self._http_client is not None:
                kwargs["http_client"] = self._http_client
            self._app = msal.ConfidentialClientApplication(
                self._client_id,
                client_credential=self._client_secret,
                authority=self._authority,
                # Instance discovery asks login.microsoftonline.com about the host: only sensible for Microsoft's.
                instance_discovery=is_microsoft_authority(self._authority),
                azure_region=None,
                **kwargs,
            )
        return self._app

    def invalidate(self) -> None:
        """Forget the cached token, so the next ``token()`` asks the identity platform again.

        For a 401 from an API that MSAL's cache still considers valid (revoked, or a restarted service).
        MSAL offers no forced refresh for client credentials, so the application (and its cache) is rebuilt.
        """
        with self._lock:
            self._app = None

    def token(self) -> str:
        """Return a valid access token, from MSAL's cache when it can."""
        with self._lock:
            result = self._application().acquire_token_for_client(scopes=[self._scope])
        if "access_token" not in result:
            error = TokenError if result.get("error") in TRANSIENT_TOKEN_ERRORS else TokenRefused
            raise error(
                f"token request for {self._scope} (client {self._client_id}) failed: {result.get('error')}: "
                f"{(result.get('error_description') or '').splitlines()[0] if result.get('error_description') else ''}"
            )
        if result.get("token_source") == "identity_provider":
            if self._on_new_token is not None:
                self._on_new_token(result["access_token"])
            log.info("acquired a new token for %s (client %s)", self._scope, self._client_id)
        return result["access_token"]
