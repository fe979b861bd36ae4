"""The hooks turn Airflow Connections (here ``AIRFLOW_CONN_*`` JSON, Airflow's own environment-variable backend) into
clients and sinks: required fields, base URLs, https enforcement (through preflight), extras, and a limiter
identity that never holds the secret. No network: MSAL is replaced by a recorder, and nothing is sent."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests

from tc_sentinel import hooks, preflight
from tc_sentinel.hooks import DefenderHook, MsGraphHook, SentinelHook, ThreatConnectHook

SECRET = "s3cr3t-VALUE-that-must-never-leak"
TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
WORKSPACE = "99999999-8888-7777-6666-555555555555"


def use_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: Any) -> None:
    """Define ``conn_id`` as Airflow reads it from ``AIRFLOW_CONN_<ID>`` (JSON form)."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "http", **fields}))


class RecordingMsal:
    """Stands in for ``msal.ConfidentialClientApplication``: records how it was built and issues one token."""

    built: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, client_id: str, client_credential: str, authority: str, **kwargs: Any) -> None:
        RecordingMsal.built.append(
            {"client_id": client_id, "client_credential": client_credential, "authority": authority, **kwargs}
        )

    def acquire_token_for_client(self, scopes: list[str]) -> dict[str, Any]:
        RecordingMsal.built[-1]["scopes"] = scopes
        return {"access_token": "issued-token", "token_source": "identity_provider"}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Limiter state in a private directory, and MSAL that never leaves the process."""
    import msal

    RecordingMsal.built = []
    monkeypatch.setattr(msal, "ConfidentialClientApplication", RecordingMsal)
    monkeypatch.setenv("TC_SENTINEL_LIMITER_DIR", str(tmp_path / "limiters"))
    return tmp_path / "limiters"


def _microsoft(monkeypatch: pytest.MonkeyPatch, conn_id: str, host: str | None, **extra: Any) -> None:
    fields: dict[str, Any] = {"login": CLIENT, "password": SECRET, "extra": {"tenant_id": TENANT, **extra}}
    if host is not None:
        fields["host"] = host
    use_connection(monkeypatch, conn_id, **fields)


def _threatconnect(
    monkeypatch: pytest.MonkeyPatch, host: str = "https://app.threatconnect.com/api", **extra: Any
) -> None:
    use_connection(
        monkeypatch,
        "threatconnect_default",
        host=host,
        login="12345678901234567890",
        password=SECRET,
        extra={"owner": "Example Org", **extra},
    )


# ============================================================================================== ThreatConnect
def test_the_threatconnect_connection_gives_a_v3_client_for_its_owner_and_base_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _threatconnect(monkeypatch)
    client = ThreatConnectHook().get_conn()
    assert client.base_url == "https://app.threatconnect.com/api"
    assert client.owner == "Example Org"
    assert client.api_version == "v3"


def test_the_threatconnect_client_signs_with_the_connections_access_id_and_secret_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _threatconnect(monkeypatch)
    client = ThreatConnectHook().get_conn()
    request = client.transport.auth(requests.Request("GET", f"{client.base_url}/v3/indicators?owner=X").prepare())
    message = f"/api/v3/indicators?owner=X:GET:{request.headers['Timestamp']}".encode()
    expected = base64.b64encode(hmac.new(SECRET.encode(), message, hashlib.sha256).digest()).decode()
    assert request.headers["Authorization"] == f"TC 12345678901234567890:{expected}"


@pytest.mark.parametrize(
    ("extra", "version"), [({"api_version": "v2"}, "v2"), ({"api_version": "V3"}, "v3"), ({}, "v3")]
)
def test_the_api_version_extra_chooses_v2_or_v3(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, str], version: str
) -> None:
    _threatconnect(monkeypatch, **extra)
    assert ThreatConnectHook().get_conn().api_version == version


def test_an_unknown_api_version_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    _threatconnect(monkeypatch, api_version="v4")
    with pytest.raises(ValueError, match="api_version must be v2 or v3, got 'v4'"):
        ThreatConnectHook().get_conn()


def test_the_page_size_extra_reaches_the_client_within_the_api_maximum(monkeypatch: pytest.MonkeyPatch) -> None:
    _threatconnect(monkeypatch, page_size=250)
    assert ThreatConnectHook().get_conn().page_size == 250
    _threatconnect(monkeypatch, page_size=50_000)
    assert ThreatConnectHook().get_conn().page_size == 10_000  # threatconnect_api.md: resultLimit max 10,000


def test_a_threatconnect_connection_without_an_owner_names_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    use_connection(monkeypatch, "threatconnect_default", host="https://tc.example/api", login="id", password=SECRET)
    with pytest.raises(ValueError, match=r"'threatconnect_default' lacks extra field\(s\) \['owner'\]"):
        ThreatConnectHook().get_conn()


@pytest.mark.parametrize("missing", ["login", "password"])
def test_a_connection_without_its_id_or_secret_says_which_fields_it_needs(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    fields = {"host": "https://tc.example/api", "login": "id", "password": SECRET, "extra": {"owner": "Org"}}
    del fields[missing]
    use_connection(monkeypatch, "threatconnect_default", **fields)
    with pytest.raises(ValueError, match=r"'threatconnect_default' needs login \(id\) and password \(secret\)"):
        ThreatConnectHook().get_conn()


def test_a_connection_without_a_host_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    use_connection(monkeypatch, "threatconnect_default", login="id", password=SECRET, extra={"owner": "Org"})
    with pytest.raises(ValueError, match=r"'threatconnect_default' has no host"):
        ThreatConnectHook().get_conn()


def test_a_connection_that_does_not_exist_is_an_error_naming_it() -> None:
    with pytest.raises(Exception, match="threatconnect_nowhere"):
        ThreatConnectHook("threatconnect_nowhere").get_conn()


@pytest.mark.parametrize(
    ("fields", "url"),
    [
        ({"host": "tc.example.com"}, "https://tc.example.com"),
        ({"host": "tc.example.com/api/"}, "https://tc.example.com/api"),
        ({"host": "tc.example.com", "port": 8443}, "https://tc.example.com:8443"),
        ({"host": "https://tc.example.com/api", "port": 8443}, "https://tc.example.com:8443/api"),
        ({"host": "tc.example.com", "schema": "http"}, "http://tc.example.com"),
    ],
)
def test_a_host_without_a_scheme_is_https_unless_the_schema_says_otherwise(
    monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any], url: str
) -> None:
    use_connection(monkeypatch, "threatconnect_default", login="id", password=SECRET, extra={"owner": "Org"}, **fields)
    assert ThreatConnectHook().get_conn().base_url == url


def test_the_secret_key_never_shows_in_the_clients_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    _threatconnect(monkeypatch)
    client = ThreatConnectHook().get_conn()
    assert SECRET not in repr(client)
    assert SECRET not in repr(client.transport.auth)


# ============================================================================================== https enforcement
PLAIN_HTTP = "http://api.example.com"


def _checks(monkeypatch: pytest.MonkeyPatch, targets: list[str]) -> dict[str, preflight.Check]:
    return {c.connection: c for c in preflight.check_all(targets)}


def test_preflight_refuses_a_threatconnect_connection_on_plain_http_before_sending_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _threatconnect(monkeypatch, host=f"{PLAIN_HTTP}/api")
    check = _checks(monkeypatch, [])["threatconnect_default"]
    assert not check.ok
    assert check.permanent
    assert "plain http: the APIs and MSAL need https" in check.detail


@pytest.mark.parametrize(
    ("target", "conn_id", "extra"),
    [
        ("graph", "msgraph_default", {}),
        ("sentinel", "sentinel_default", {"workspace_id": WORKSPACE}),
        ("defender", "defender_default", {}),
    ],
)
def test_preflight_refuses_a_microsoft_connection_on_plain_http_before_asking_for_a_token(
    monkeypatch: pytest.MonkeyPatch, target: str, conn_id: str, extra: dict[str, Any]
) -> None:
    _threatconnect(monkeypatch, host=f"{PLAIN_HTTP}/api")
    _microsoft(monkeypatch, conn_id, PLAIN_HTTP, **extra)
    check = _checks(monkeypatch, [target])[conn_id]
    assert not check.ok
    assert "plain http" in check.detail
    assert RecordingMsal.built == []  # no token was asked for


def test_preflight_refuses_a_plain_http_management_host_for_sentinel_read_back(monkeypatch: pytest.MonkeyPatch) -> None:
    _threatconnect(monkeypatch, host=f"{PLAIN_HTTP}/api")
    _microsoft(
        monkeypatch,
        "sentinel_default",
        "https://api.ti.sentinel.azure.com",
        workspace_id=WORKSPACE,
        subscription_id="sub",
        resource_group="rg",
        workspace_name="ws",
        management_host=PLAIN_HTTP,
    )
    check = _checks(monkeypatch, ["sentinel"])["sentinel_default"]
    assert not check.ok
    assert f"{PLAIN_HTTP!r} is plain http" in check.detail


def test_preflight_names_every_connection_that_lacks_a_required_field(monkeypatch: pytest.MonkeyPatch) -> None:
    _threatconnect(monkeypatch, host=f"{PLAIN_HTTP}/api")
    use_connection(monkeypatch, "msgraph_default", host="https://graph.microsoft.com", login=CLIENT, password=SECRET)
    use_connection(monkeypatch, "sentinel_default", login=CLIENT, password=SECRET, extra={"tenant_id": TENANT})
    checks = _checks(monkeypatch, ["graph", "sentinel"])
    assert "lacks extra field(s) ['tenant_id']" in checks["msgraph_default"].detail
    assert "lacks extra field(s) ['workspace_id']" in checks["sentinel_default"].detail
    assert checks["msgraph_default"].permanent
    assert checks["sentinel_default"].permanent


# ============================================================================================== Graph
def test_the_graph_connection_gives_a_client_on_its_host_with_a_token_for_graph_from_its_tenant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _microsoft(monkeypatch, "msgraph_default", "https://graph.microsoft.com/")
    client = MsGraphHook().get_conn()
    assert client.base_url == "https://graph.microsoft.com"
    assert client.token_provider.token() == "issued-token"
    built = RecordingMsal.built[-1]
    assert built["client_id"] == CLIENT
    assert built["client_credential"] == SECRET
    assert built["authority"] == f"https://login.microsoftonline.com/{TENANT}"
    assert built["scopes"] == ["https://graph.microsoft.com/.default"]
    assert built["instance_discovery"] is True


def test_the_graph_host_defaults_to_graph_microsoft_com(monkeypatch: pytest.MonkeyPatch) -> None:
    _microsoft(monkeypatch, "msgraph_default", None)
    assert MsGraphHook().get_conn().base_url == "https://graph.microsoft.com"


def test_an_authority_host_extra_reaches_msal_without_instance_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    _microsoft(monkeypatch, "msgraph_default", "https://graph.example", authority_host="https://login.example/")
    MsGraphHook().get_conn().token_provider.token()
    assert RecordingMsal.built[-1]["authority"] == f"https://login.example/{TENANT}"
    assert RecordingMsal.built[-1]["instance_discovery"] is False


def test_the_graph_budget_is_950_a_minute_unless_the_connection_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    _microsoft(monkeypatch, "msgraph_default", "https://graph.microsoft.com")
    assert MsGraphHook().get_conn().limiter.max_requests == 950
    _microsoft(monkeypatch, "msgraph_default", "https://graph.microsoft.com", requests_per_minute=120)
    assert MsGraphHook().get_conn().limiter.max_requests == 120


def test_the_graph_sink_wraps_the_hooks_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from include.microsoft.graph import GraphSink

    _microsoft(monkeypatch, "msgraph_default", "https://graph.example")
    sink = MsGraphHook().get_sink()
    assert isinstance(sink, GraphSink)
    assert sink.client.base_url == "https://graph.example"


# ============================================================================================== Sentinel
def test_the_sentinel_connection_gives_a_sink_for_its_workspace_and_the_owners_sourcesystem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _microsoft(monkeypatch, "sentinel_default", "https://api.ti.sentinel.azure.com", workspace_id=WORKSPACE)
    sink = SentinelHook().get_sink("Example Org")
    assert sink.client.endpoint == "https://api.ti.sentinel.azure.com"
    assert sink.client.workspace_id == WORKSPACE
    assert sink.sourcesystem == "ThreatConnect-Example Org"
    assert sink.client.management is None
    assert sink.client.limiter.max_requests == 95
    sink.client.token_provider.token()
    assert RecordingMsal.built[-1]["scopes"] == ["https://management.azure.com/.default"]
    assert RecordingMsal.built[-1]["authority"] == f"https://login.microsoftonline.com/{TENANT}"


def test_the_sentinel_management_coordinates_reach_the_read_back_target(monkeypatch: pytest.MonkeyPatch) -> None:
    _microsoft(
        monkeypatch,
        "sentinel_default",
        None,
        workspace_id=WORKSPACE,
        subscription_id="sub-1",
        resource_group="rg-1",
        workspace_name="ws-1",
        management_host="https://management.example",
        requests_per_minute=40,
    )
    sink = SentinelHook().get_sink("Org")
    assert sink.client.endpoint == "https://api.ti.sentinel.azure.com"
    management = sink.client.management
    assert (management.subscription_id, management.resource_group, management.workspace_name, management.host) == (
        "sub-1",
        "rg-1",
        "ws-1",
        "https://management.example",
    )
    assert sink.client.limiter.max_requests == 40
    assert sink.read_back


def test_partial_management_coordinates_leave_verify_on_acknowledgements(monkeypatch: pytest.MonkeyPatch) -> None:
    _microsoft(monkeypatch, "sentinel_default", None, workspace_id=WORKSPACE, subscription_id="sub-1")
    assert SentinelHook().get_sink("Org").client.management is None


# ============================================================================================== Defender
def test_the_defender_connection_gives_a_sink_with_its_action_groups_capacity_and_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _microsoft(
        monkeypatch,
        "defender_default",
        "https://eu.api.security.microsoft.com",
        action="Block",
        rbac_group_names="SOC, Tier 2 ,",
        capacity=5000,
        requests_per_minute=10,
    )
    sink = DefenderHook().get_sink()
    assert sink.client.base_url == "https://eu.api.security.microsoft.com"
    assert sink.client.client_id == CLIENT
    assert sink.action == "Block"
    assert sink.rbac_group_names == ["SOC", "Tier 2"]
    assert sink.capacity == 5000
    assert sink.client.limiter.max_requests == 10
    sink.client.token_provider.token()
    assert RecordingMsal.built[-1]["scopes"] == ["https://api.securitycenter.microsoft.com/.default"]


def test_the_defender_defaults_are_alert_no_groups_15000_and_28_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    _microsoft(monkeypatch, "defender_default", None, rbac_group_names=["A", "B"])
    sink = DefenderHook().get_sink()
    assert sink.client.base_url == "https://api.security.microsoft.com"
    assert (sink.action, sink.rbac_group_names, sink.capacity) == ("Alert", ["A", "B"], 15_000)
    assert sink.client.limiter.max_requests == 28


def test_an_unknown_defender_action_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _microsoft(monkeypatch, "defender_default", None, action="Nuke")
    with pytest.raises(ValueError, match="unknown Defender action 'Nuke'"):
        DefenderHook().get_sink()


# ============================================================================================== every Microsoft hook
def _client_of(kind: str) -> Any:
    if kind == "graph":
        return MsGraphHook().get_conn()
    if kind == "sentinel":
        return SentinelHook().get_sink("Org").client
    return DefenderHook().get_conn()


CONN_IDS = {"graph": "msgraph_default", "sentinel": "sentinel_default", "defender": "defender_default"}
EXTRA = {"graph": {}, "sentinel": {"workspace_id": WORKSPACE}, "defender": {}}
DEFAULT_BUDGET = {"graph": 950, "sentinel": 95, "defender": 28}


@pytest.mark.parametrize("kind", list(CONN_IDS))
def test_a_microsoft_connection_without_a_tenant_names_the_missing_extra(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    use_connection(
        monkeypatch, CONN_IDS[kind], host="https://api.example", login=CLIENT, password=SECRET, extra=EXTRA[kind]
    )
    with pytest.raises(ValueError, match=rf"'{CONN_IDS[kind]}' lacks extra field\(s\) \['tenant_id'\]"):
        _client_of(kind)


@pytest.mark.parametrize("kind", list(CONN_IDS))
def test_the_limiter_identity_never_contains_the_secret(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    import include.transport.limiter as limiter_module

    identities: list[str] = []
    real = hooks.limiter_path

    def spy(root: Path, identity: str) -> Path:
        identities.append(identity)
        return real(root, identity)

    for module in (hooks, limiter_module):
        monkeypatch.setattr(module, "limiter_path", spy)
    _microsoft(monkeypatch, CONN_IDS[kind], "https://api.example", **EXTRA[kind])
    _client_of(kind)
    assert len(identities) == 1
    assert SECRET not in identities[0]
    assert CLIENT in identities[0]


@pytest.mark.parametrize("kind", list(CONN_IDS))
def test_one_identity_shares_one_budget_file_whatever_its_secret_and_another_identity_gets_its_own(
    monkeypatch: pytest.MonkeyPatch, kind: str, offline: Path
) -> None:
    _microsoft(monkeypatch, CONN_IDS[kind], "https://api.example", **EXTRA[kind])
    first = _client_of(kind).limiter.state_path
    use_connection(
        monkeypatch,
        CONN_IDS[kind],
        host="https://api.example",
        login=CLIENT,
        password="rotated",
        extra={"tenant_id": TENANT, **EXTRA[kind]},
    )
    assert _client_of(kind).limiter.state_path == first
    use_connection(
        monkeypatch,
        CONN_IDS[kind],
        host="https://api.example",
        login="another-client",
        password=SECRET,
        extra={"tenant_id": TENANT, **EXTRA[kind]},
    )
    assert _client_of(kind).limiter.state_path != first
    assert first.parent == offline
    assert SECRET not in str(first)


@pytest.mark.parametrize("empty", ["", None])
@pytest.mark.parametrize(
    "kind",
    [
        "graph",
        "sentinel",
        "defender",
    ],
)
def test_an_empty_requests_per_minute_extra_falls_back_to_the_default_budget(
    monkeypatch: pytest.MonkeyPatch, kind: str, empty: str | None
) -> None:
    _microsoft(monkeypatch, CONN_IDS[kind], "https://api.example", requests_per_minute=empty, **EXTRA[kind])
    assert _client_of(kind).limiter.max_requests == DEFAULT_BUDGET[kind]


def test_a_new_token_is_registered_with_the_secrets_masker(monkeypatch: pytest.MonkeyPatch) -> None:
    masked: list[str] = []
    monkeypatch.setattr(hooks, "_mask", masked.append)
    _microsoft(monkeypatch, "msgraph_default", "https://graph.example")
    MsGraphHook().get_conn().token_provider.token()
    assert masked == ["issued-token"]


# ============================================================================================== sink()
def test_sink_picks_the_kind_and_an_optional_connection_id(monkeypatch: pytest.MonkeyPatch) -> None:
    from include.microsoft.defender import DefenderSink
    from include.microsoft.graph import GraphSink
    from include.microsoft.sentinel import SentinelSink

    _microsoft(monkeypatch, "msgraph_other", "https://graph.other.example")
    _microsoft(monkeypatch, "sentinel_default", None, workspace_id=WORKSPACE)
    _microsoft(monkeypatch, "defender_default", None)
    graph = hooks.sink("graph@msgraph_other", "Org")
    assert isinstance(graph, GraphSink)
    assert graph.client.base_url == "https://graph.other.example"
    assert isinstance(hooks.sink("sentinel", "Org"), SentinelSink)
    assert isinstance(hooks.sink("defender", "Org"), DefenderSink)
    with pytest.raises(ValueError, match="unknown sink 'splunk'"):
        hooks.sink("splunk", "Org")


DEFAULT_IN_FLIGHT = {"graph": 8, "sentinel": 4, "defender": 2}


def _sink_of(kind: str) -> Any:
    return hooks.sink(kind, "Example Org")


@pytest.mark.parametrize("kind", list(CONN_IDS))
def test_each_target_keeps_its_documented_number_of_requests_in_flight(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    _microsoft(monkeypatch, CONN_IDS[kind], "https://api.example", **EXTRA[kind])
    assert _sink_of(kind).in_flight == DEFAULT_IN_FLIGHT[kind]


@pytest.mark.parametrize("kind", list(CONN_IDS))
def test_the_connection_extra_max_in_flight_sets_how_many_requests_wait_at_once(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    _microsoft(monkeypatch, CONN_IDS[kind], "https://api.example", max_in_flight="1", **EXTRA[kind])
    assert _sink_of(kind).in_flight == 1


@pytest.mark.parametrize("kind", list(CONN_IDS))
def test_preflight_names_a_max_in_flight_outside_one_to_sixteen_before_anything_is_sent(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    _threatconnect(monkeypatch)
    _microsoft(monkeypatch, CONN_IDS[kind], "https://api.example", max_in_flight=64, **EXTRA[kind])
    check = _checks(monkeypatch, [kind])[CONN_IDS[kind]]
    assert not check.ok
    assert check.permanent
    assert "max_in_flight" in check.detail
    assert RecordingMsal.built == []  # refused before a token was asked for


@pytest.mark.parametrize("kind", list(CONN_IDS))
def test_a_sink_reads_its_connection_once_so_a_secrets_backend_is_asked_once(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    from airflow.sdk.bases.hook import BaseHook

    _microsoft(monkeypatch, CONN_IDS[kind], "https://api.example", **EXTRA[kind])
    asked: list[str] = []
    real = BaseHook.get_connection.__func__  # type: ignore[attr-defined]

    def counting(cls: type, conn_id: str) -> Any:
        asked.append(conn_id)
        return real(cls, conn_id)

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(counting))
    _sink_of(kind)
    assert asked.count(CONN_IDS[kind]) == 1  # (the shared budget's optional Redis Connection is asked for too)


@pytest.mark.parametrize(
    ("authority", "arm"),
    [
        ("https://login.microsoftonline.us", "https://management.usgovcloudapi.net"),
        ("https://login.chinacloudapi.cn", "https://management.chinacloudapi.cn"),
        ("https://login.microsoftonline.com", "https://management.azure.com"),
    ],
)
def test_a_sentinel_connection_in_a_sovereign_cloud_asks_for_that_clouds_resource_manager(
    monkeypatch: pytest.MonkeyPatch, authority: str, arm: str
) -> None:
    _microsoft(
        monkeypatch,
        "sentinel_default",
        "https://api.ti.sentinel.azure.us",
        workspace_id=WORKSPACE,
        authority_host=authority,
        subscription_id="sub-1",
        resource_group="rg-1",
        workspace_name="ws-1",
    )
    sink = SentinelHook().get_sink("Org")
    sink.client.token_provider.token()
    assert RecordingMsal.built[-1]["scopes"] == [f"{arm}/.default"]
    assert RecordingMsal.built[-1]["authority"] == f"{authority}/{TENANT}"
    assert sink.client.management.host == arm
