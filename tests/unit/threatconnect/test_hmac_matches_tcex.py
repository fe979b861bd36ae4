"""Our HMAC signer against ThreatConnect's own: tcex's ``HmacAuth``/``TcAuth``, read from the pinned tcex wheel.

The vendor modules are loaded from the zip as they are; only what they import and do not use for signing is stubbed
(``Sensitive``, a pydantic field type whose ``.value`` is the secret), and their ``time`` is pinned so both signers
sign the same second. Both sign the same ``requests.PreparedRequest``, so the rule under test is the vendor's:
``base64(HMAC-SHA256(secret, f"{path_url}:{method}:{timestamp}"))`` over the path *with* its raw query.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from include.threatconnect.auth import HmacAuth, signature
from tests.vendor_wheels import TCEX, read_member, wheel

_AUTH_PACKAGE = "tcex.requests_tc.auth"
_VENDOR_MODULES = ("hmac_auth", "token_auth", "tc_auth")  # in import order


class _Sensitive:
    """Stands in for ``tcex.input.field_type.sensitive.Sensitive``: the signer only reads ``.value``."""

    def __init__(self, value: str) -> None:
        self._sensitive_value = value

    @property
    def value(self) -> str:
        return self._sensitive_value


def _package(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []  # a package, so relative imports resolve through sys.modules
    return module


@pytest.fixture(scope="module")
def tcex_auth() -> Iterator[dict[str, types.ModuleType]]:
    """tcex's ``hmac_auth``, ``token_auth`` and ``tc_auth`` modules, executed from the wheel's own source."""
    whl: Path = wheel(*TCEX)
    stubs: dict[str, types.ModuleType] = {
        name: _package(name)
        for name in ("tcex", "tcex.requests_tc", _AUTH_PACKAGE, "tcex.input", "tcex.input.field_type")
    }
    sensitive = types.ModuleType("tcex.input.field_type.sensitive")
    sensitive.Sensitive = _Sensitive  # type: ignore[attr-defined]
    stubs[sensitive.__name__] = sensitive
    saved = {name: sys.modules.get(name) for name in [*stubs, *(f"{_AUTH_PACKAGE}.{m}" for m in _VENDOR_MODULES)]}
    sys.modules.update(stubs)
    loaded: dict[str, types.ModuleType] = {}
    try:
        for short in _VENDOR_MODULES:
            member = f"tcex/requests_tc/auth/{short}.py"
            module = types.ModuleType(f"{_AUTH_PACKAGE}.{short}")
            module.__package__ = _AUTH_PACKAGE
            module.__file__ = f"{whl}/{member}"
            sys.modules[module.__name__] = module
            exec(compile(read_member(whl, member), module.__file__, "exec"), module.__dict__)  # noqa: S102
            loaded[short] = module
        yield loaded
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def _pin_clock(module: types.ModuleType, timestamp: float) -> None:
    """tcex reads ``int(time.time())`` inside its ``__call__``: give its module a clock that says ``timestamp``."""
    module.time = types.SimpleNamespace(time=lambda: timestamp)  # type: ignore[attr-defined]


def _prepared(method: str, url: str, params: Any = None, body: Any = None) -> requests.PreparedRequest:
    return requests.Request(method, url, params=params, json=body).prepare()


def _vendor_headers(
    tcex_auth: dict[str, types.ModuleType],
    module: str,
    access_id: str,
    secret: str,
    timestamp: float,
    request: requests.PreparedRequest,
) -> dict[str, str]:
    _pin_clock(tcex_auth[module], timestamp)
    cls = tcex_auth[module].HmacAuth if module == "hmac_auth" else tcex_auth[module].TcAuth
    signed = cls(access_id, _Sensitive(secret))(request.copy())
    return {"Authorization": signed.headers["Authorization"], "Timestamp": signed.headers["Timestamp"]}


def _our_headers(access_id: str, secret: str, timestamp: float, request: requests.PreparedRequest) -> dict[str, str]:
    signed = HmacAuth(access_id, secret, clock=lambda: timestamp)(request.copy())
    return {"Authorization": signed.headers["Authorization"], "Timestamp": signed.headers["Timestamp"]}


BASE_V3 = "https://app.threatconnect.com/api"
BASE_V2 = "https://api.threatconnect.com"
TQL = 'typeName in ("Address","Host") and lastModified >= "2026-01-01T00:00:00Z"'

#: (id, method, url, params, json body): v2 and v3 paths, raw and requests-encoded queries, unicode, no query.
REQUESTS: list[tuple[str, str, str, Any, Any]] = [
    ("v2 path without a query", "GET", f"{BASE_V2}/v2/owners", None, None),
    (
        "v2 docs example with a percent-encoded space",
        "GET",
        f"{BASE_V2}/v2/indicators/hosts/example.com?owner=Common%20Community",
        None,
        None,
    ),
    (
        "v2 owner given as params (requests encodes the space as +)",
        "GET",
        f"{BASE_V2}/v2/indicators/addresses",
        {"owner": "Common Community", "resultStart": 0, "resultLimit": 10000},
        None,
    ),
    (
        "v2 under the /api prefix with modifiedSince",
        "GET",
        f"{BASE_V3}/v2/indicators",
        {"owner": "Example Org", "modifiedSince": "2026-01-01T00:00:00Z"},
        None,
    ),
    (
        "v2 url indicator with an encoded value in the path",
        "GET",
        f"{BASE_V2}/v2/indicators/urls/http%3A%2F%2Fbad.example.com%2Flogin%3Fx%3D1",
        {"owner": "Org"},
        None,
    ),
    (
        "v2 filters with encoded operators",
        "GET",
        f"{BASE_V2}/v2/indicators?filters=active%3Dtrue,active%3Dfalse&orParams=true",
        None,
        None,
    ),
    (
        "v2 deleted listing",
        "GET",
        f"{BASE_V2}/v2/indicators/hosts/deleted",
        {"owner": "Org", "deletedSince": "2026-02-01T00:00:00Z"},
        None,
    ),
    (
        "v3 TQL query encoded by requests",
        "GET",
        f"{BASE_V3}/v3/indicators",
        {
            "tql": TQL,
            "fields": ["tags", "securityLabels", "threatAssess", "falsePositives"],
            "sorting": "lastModified ASC",
            "resultLimit": 10000,
            "owner": "Example Org",
        },
        None,
    ),
    (
        "v3 next link with an already encoded query",
        "GET",
        f"{BASE_V3}/v3/indicators?tql=typeName%20in%20(%22Address%22)&resultStart=10000&resultLimit=10000",
        None,
        None,
    ),
    ("v3 single indicator without a query", "GET", f"{BASE_V3}/v3/indicators/12345", None, None),
    (
        "v3 unicode owner in the query",
        "GET",
        f"{BASE_V3}/v3/indicators",
        {"owner": "Müller & Söhne Лаб 例え", "tql": 'summary == "bücher.de"'},
        None,
    ),
    (
        "v3 unicode in the path (percent-encoded by requests)",
        "GET",
        f"{BASE_V3}/v3/indicators/bücher.example",
        {"owner": "Org"},
        None,
    ),
    (
        "v3 IDN host indicator summary",
        "GET",
        f"{BASE_V3}/v3/indicators",
        {"tql": 'summary in ("xn--bcher-kva.example","пример.рф")'},
        None,
    ),
    (
        "query with an empty value and a repeated key",
        "GET",
        f"{BASE_V3}/v3/indicators",
        [("owner", ""), ("fields", "tags"), ("fields", "attributes")],
        None,
    ),
    (
        "query with reserved characters",
        "GET",
        f"{BASE_V3}/v3/indicators",
        {"tql": "summary like '%a+b/c?d=e&f#g%'"},
        None,
    ),
    (
        "a POST with a JSON body signs only the target",
        "POST",
        f"{BASE_V3}/v3/indicators",
        {"owner": "Org"},
        {"type": "Host", "hostName": "bad.example.com"},
    ),
    ("a PUT on a v3 id", "PUT", f"{BASE_V3}/v3/indicators/98765", None, {"active": False}),
    ("a DELETE with a query", "DELETE", f"{BASE_V3}/v3/indicators/98765", {"owner": "Org"}, None),
    ("a lower-case method", "get", f"{BASE_V3}/v3/indicators", {"owner": "Org"}, None),
    ("a port and a trailing slash", "GET", "https://tc.internal.example:8443/api/v3/indicators/", None, None),
]

#: (access id, secret key, timestamp): numeric ids, punctuation and unicode in the secret, fractional clocks.
CREDENTIALS: list[tuple[str, str, float]] = [
    ("12345678901234567890", "my-secret-key", 1513703787),
    ("00000000000000000001", "aBc+/=:;?&#%~`!@$^*()[]{}|\\\"'<> ", 1767225600),
    ("98765432109876543210", "sécret-ключ-秘密", 1700000000.999),
    ("access id with spaces", "s" * 200, 2_000_000_000),
]


@pytest.mark.parametrize("module", ["hmac_auth", "tc_auth"])
@pytest.mark.parametrize(("access_id", "secret", "timestamp"), CREDENTIALS, ids=lambda v: str(v)[:24])
@pytest.mark.parametrize(("method", "url", "params", "body"), [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS])
def test_our_authorization_and_timestamp_headers_equal_what_tcex_puts_on_the_same_request(
    tcex_auth: dict[str, types.ModuleType],
    module: str,
    access_id: str,
    secret: str,
    timestamp: float,
    method: str,
    url: str,
    params: Any,
    body: Any,
) -> None:
    request = _prepared(method, url, params, body)
    assert _our_headers(access_id, secret, timestamp, request) == _vendor_headers(
        tcex_auth, module, access_id, secret, timestamp, request
    )


class _Target:
    """What tcex's ``_hmac_header`` reads from a request: ``path_url`` and ``method``, nothing else."""

    def __init__(self, path_url: str, method: str) -> None:
        self.path_url = path_url
        self.method = method


@pytest.mark.parametrize(
    "path_and_query",
    [
        "/v2/indicators?owner=Common%20Community",
        "/api/v2/indicators?owner=Common%20Community",
        "/api/v2/indicators?owner=Common+Community",
        "/api/v3/indicators?tql=typeName%20in%20(%22Host%22)&fields=tags&fields=securityLabels",
        "/api/v3/indicators",
        "/api/v3/indicators?",
        "/api/v3/indicators/bücher.example?owner=Müller",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_the_signature_covers_the_path_with_its_raw_query_exactly_as_tcex_signs_it(
    tcex_auth: dict[str, types.ModuleType], path_and_query: str, method: str
) -> None:
    vendor = tcex_auth["hmac_auth"].HmacAuth("1234", _Sensitive("k3y"))
    expected = vendor._hmac_header(_Target(path_and_query, method), 1513703787)
    assert f"TC 1234:{signature('k3y', path_and_query, method, 1513703787)}" == expected


def test_a_different_query_gives_a_different_vendor_signature_so_the_comparison_can_fail(
    tcex_auth: dict[str, types.ModuleType],
) -> None:
    vendor = tcex_auth["hmac_auth"].HmacAuth("1234", _Sensitive("k3y"))
    with_query = vendor._hmac_header(_Target("/api/v3/indicators?owner=Org", "GET"), 1513703787)
    without_query = vendor._hmac_header(_Target("/api/v3/indicators", "GET"), 1513703787)
    assert with_query != without_query
    assert f"TC 1234:{signature('k3y', '/api/v3/indicators', 'GET', 1513703787)}" != with_query


def test_the_vendor_wheel_is_the_pinned_release() -> None:
    assert wheel(*TCEX).name.startswith(f"tcex-{TCEX[1]}-")
