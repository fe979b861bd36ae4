"""Start every simulator together and describe them as the Airflow Connections and Variables the DAG reads."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulators.mslogin import LoginService
from simulators.server import HttpsServer
from simulators.tls import TlsMaterial, make_tls_material

TENANT_ID = "8f0c3b5e-1d2a-4c6b-9e7f-0a1b2c3d4e5f"
CLIENT_ID = "3c7e9a1b-2d4f-4a6c-8e0b-1f2a3b4c5d6e"
WORKSPACE_ID = "5a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
TC_ACCESS_ID = "12345678901234567890"
OWNER = "Example Organization"
SUBSCRIPTION_ID = "00000000-0000-4000-8000-000000000000"
RESOURCE_GROUP = "soc"
WORKSPACE_NAME = "soc-workspace"


@dataclass
class Stack:
    """Running ThreatConnect and Microsoft simulators with the credentials they accept."""

    tls: TlsMaterial
    tc_server: HttpsServer
    tc: Any  # simulators.threatconnect.ThreatConnectService
    ms_server: HttpsServer
    login: LoginService
    graph: Any  # simulators.graph.GraphService
    sentinel: Any  # simulators.sentinel.SentinelService
    tc_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    api_version: str = "v3"
    defender: Any = None  # simulators.defender.DefenderService

    @property
    def secrets(self) -> list[str]:
        """Every secret the stack handed out (tests check none of them leaks into logs or snapshots)."""
        return [self.tc_secret, self.client_secret, *self.login.tokens]

    def connections(self) -> dict[str, dict[str, Any]]:
        ms = self.ms_server.base_url
        return {
            "threatconnect_default": {
                "conn_type": "http",
                "host": f"{self.tc_server.base_url}/api",
                "login": TC_ACCESS_ID,
                "password": self.tc_secret,
                "extra": {"owner": OWNER, "api_version": self.api_version},
            },
            "msgraph_default": {
                "conn_type": "http",
                "host": ms,
                "login": CLIENT_ID,
                "password": self.client_secret,
                "extra": {"tenant_id": TENANT_ID, "authority_host": ms},
            },
            "sentinel_default": {
                "conn_type": "http",
                "host": ms,
                "login": CLIENT_ID,
                "password": self.client_secret,
                "extra": {
                    "tenant_id": TENANT_ID,
                    "workspace_id": WORKSPACE_ID,
                    "authority_host": ms,
                    "subscription_id": SUBSCRIPTION_ID,
                    "resource_group": RESOURCE_GROUP,
                    "workspace_name": WORKSPACE_NAME,
                    "management_host": ms,
                },
            },
            "defender_default": {
                "conn_type": "http",
                "host": ms,
                "login": CLIENT_ID,
                "password": self.client_secret,
                "extra": {"tenant_id": TENANT_ID, "authority_host": ms},
            },
        }

    def env(
        self, data_root: str | None = None, sink: str | None = None, indicator_types: list[str] | None = None
    ) -> dict[str, str]:
        """Environment variables that point a plain Airflow at the simulators."""
        env = {f"AIRFLOW_CONN_{name.upper()}": json.dumps(conn) for name, conn in self.connections().items()}
        env["REQUESTS_CA_BUNDLE"] = str(self.tls.ca_file)
        if data_root is not None:
            env["AIRFLOW_VAR_TC_SENTINEL_DATA_ROOT"] = data_root
        if sink is not None:
            env["AIRFLOW_VAR_TC_SENTINEL_SINK"] = sink
        if indicator_types is not None:
            env["AIRFLOW_VAR_TC_SENTINEL_INDICATOR_TYPES"] = json.dumps(indicator_types)
        return env

    def graph_external_ids(self) -> list[str]:
        """externalIds of every Graph indicator our app owns (duplicates included, so tests can count them)."""
        return [i.get("externalId") for i in self.graph.owned_by(CLIENT_ID)]

    def sentinel_objects(self) -> dict[str, dict[str, Any]]:
        """The latest stored version of every STIX object in our workspace, keyed by STIX id."""
        return {key[2]: obj for key, obj in self.sentinel.objects.items() if key[0] == WORKSPACE_ID}

    def target_external_ids(self, sink: str, include_retracted: bool = True) -> set[str]:
        """External ids the target holds; without ``include_retracted`` only live ones (Graph isActive, STIX not
        revoked)."""
        if sink == "graph":
            return {
                i.get("externalId")
                for i in self.graph.owned_by(CLIENT_ID)
                if include_retracted or i.get("isActive", True) is not False
            }
        if sink == "defender":  # Defender deletes on retraction; our id travels as the description's tag
            found = (
                re.search(r"\[tc:([^\]\s]+)\]\s*$", str(i.get("description") or ""))
                for i in self.defender.created_by(CLIENT_ID)
            )
            return {m.group(1) for m in found if m}
        return {
            sid.removeprefix("indicator--")
            for sid, obj in self.sentinel_objects().items()
            if include_retracted or not obj.get("revoked")
        }

    def stop(self) -> None:
        self.tc_server.stop()
        self.ms_server.stop()


def start_stack(
    workdir: Path, indicators: list[dict[str, Any]], api_version: str = "v3", sentinel_rate_limit: int = 100
) -> Stack:
    """Start the simulators on loopback ports with a fresh CA under ``workdir``."""
    from simulators.defender import DefenderService
    from simulators.graph import GraphService
    from simulators.sentinel import SentinelService
    from simulators.threatconnect import ThreatConnectService

    tls = make_tls_material(workdir / "tls")
    tc_secret = secrets.token_urlsafe(24)
    client_secret = secrets.token_urlsafe(24)
    tc = ThreatConnectService(indicators, TC_ACCESS_ID, tc_secret, owners=(OWNER,))
    tc_server = HttpsServer([tc], tls).start()
    login = LoginService()
    login.register(TENANT_ID, CLIENT_ID, client_secret)
    graph = GraphService(login)
    sentinel = SentinelService(login, {WORKSPACE_ID}, rate_limit_per_minute=sentinel_rate_limit)
    sentinel.register_management(WORKSPACE_ID, SUBSCRIPTION_ID, RESOURCE_GROUP, WORKSPACE_NAME)
    defender = DefenderService(login)
    ms_server = HttpsServer([login, graph, sentinel, defender], tls).start()
    login.base_url = ms_server.base_url
    return Stack(
        tls,
        tc_server,
        tc,
        ms_server,
        login,
        graph,
        sentinel,
        tc_secret=tc_secret,
        client_secret=client_secret,
        api_version=api_version,
        defender=defender,
    )
