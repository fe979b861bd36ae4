"""The log redaction the hooks install: MaskSecret values, Airflow-masked values and credentials never render."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import structlog
from airflow.sdk.execution_time.comms import MaskSecret

from include.threatconnect.auth import HmacAuth
from include.transport.http import BearerAuth
from tc_sentinel import redaction


def _b64url(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _jwt() -> str:
    """An access token shaped like Entra ID's: base64url(header).base64url(claims).base64url(signature)."""
    header = _b64url({"typ": "JWT", "alg": "RS256"})
    claims = _b64url({"aud": "https://graph.microsoft.com", "appid": secrets.token_hex(8)})
    return f"{header}.{claims}.{secrets.token_urlsafe(64)}"


class _FixedTokens:
    def __init__(self, token: str) -> None:
        self._token = token

    def token(self) -> str:
        return self._token


def _signed(auth: requests.auth.AuthBase) -> dict[str, str]:
    """The headers ``auth`` puts on a real prepared request."""
    return dict(auth(requests.Request("GET", "https://api.invalid/v3/indicators?owner=Org").prepare()).headers)


# --------------------------------------------------------------------------------------------- MaskSecret
def test_a_mask_secret_request_is_logged_with_its_value_blanked() -> None:
    secret = secrets.token_urlsafe(24)
    event = {"event": "Sending request", "msg": MaskSecret(value=secret, name="tc_password")}
    out = redaction.blank_mask_secret(None, "debug", event)
    assert secret not in repr(out)
    assert repr(out["msg"]) == "MaskSecret(value='***', name='tc_password', type='MaskSecret')"


@pytest.mark.parametrize("value", ["abc", {"owner": "Org", "api_key": "k3y-value"}, ["one", "two"], None])
def test_every_kind_of_mask_secret_value_is_blanked_even_ones_the_masker_would_skip(value: object) -> None:
    out = redaction.blank_mask_secret(None, "debug", {"event": "Sending request", "msg": MaskSecret(value=value)})
    assert out["msg"].value == "***"


def test_events_without_a_mask_secret_pass_the_processor_unchanged() -> None:
    event = {"event": "Sending request", "msg": {"conn_id": "threatconnect_default"}, "level": "debug", "n": 3}
    assert redaction.blank_mask_secret(None, "debug", dict(event)) == event


# --------------------------------------------------------------------------------------------- scrub
@pytest.mark.parametrize("masker_module", ["airflow.sdk._shared.secrets_masker", "airflow._shared.secrets_masker"])
def test_scrub_masks_every_value_either_airflow_masker_knows(masker_module: str) -> None:
    masker = importlib.import_module(masker_module)
    secret = secrets.token_urlsafe(24)
    masker.mask_secret(secret)
    assert redaction.scrub(f"msg=MaskSecret(value='{secret}', name=None)") == "msg=MaskSecret(value='***', name=None)"


def test_scrub_masks_the_bearer_token_microsofts_auth_class_sends() -> None:
    token = secrets.token_urlsafe(40)  # opaque, not JWT-shaped: the scheme alone must give it away
    line = f"request headers {_signed(BearerAuth(_FixedTokens(token)))}"  # type: ignore[arg-type]
    assert token not in redaction.scrub(line)
    assert "'Authorization': 'Bearer ***'" in redaction.scrub(line)


def test_scrub_masks_the_threatconnect_signed_header() -> None:
    headers = _signed(HmacAuth("12345678901234567890", secrets.token_urlsafe(24)))
    signature = headers["Authorization"].split(":", 1)[1]
    scrubbed = redaction.scrub(f"request headers {headers}")
    assert signature not in scrubbed
    assert "'TC 12345678901234567890:***'" in scrubbed


@pytest.mark.parametrize(
    "template",
    [
        "{token}",
        "token response {{'token_type': 'Bearer', 'expires_in': 3599, 'access_token': '{token}'}}",
        '{{"token_type": "Bearer", "access_token": "{token}"}}',
        "GET https://graph.invalid/callback?state=x&access_token={token}",
        "redirect to https://app.invalid/cb%3Ftoken%3D{token}",
    ],
)
def test_scrub_masks_a_jwt_wherever_it_sits(template: str) -> None:
    token = _jwt()
    assert token not in redaction.scrub(template.format(token=token))


def test_scrub_masks_an_opaque_token_or_client_secret_in_an_oauth_body() -> None:
    token, secret = secrets.token_urlsafe(30), secrets.token_urlsafe(24)
    body = f"client_id=abc&client_secret={secret}&grant_type=client_credentials"
    response = json.dumps({"token_type": "Bearer", "access_token": token})
    scrubbed = redaction.scrub(f"{body}\n{response}")
    assert secret not in scrubbed
    assert token not in scrubbed


@pytest.mark.parametrize(
    "line",
    [
        "acquired a new token for https://graph.microsoft.com/.default (client 3c7e9a1b-2d4f-4a6c-8e0b-1f2a3b4c5d6e)",
        'https://localhost:39291 "POST /8f0c3b5e-1d2a-4c6b-9e7f-0a1b2c3d4e5f/oauth2/v2.0/token HTTP/1.1" 200 143',
        "Connection Retrieved 'threatconnect_default' (via task-sdk)",
        "load summary: created=89 updated=0 retracted=0 failed=0",
        "Sending request msg=GetConnection(conn_id='msgraph_default', type='GetConnection')",
        "TC-1234 is the ticket; token_type=Bearer",
    ],
)
def test_ordinary_messages_pass_scrub_unchanged(line: str) -> None:
    assert redaction.scrub(line) == line


# --------------------------------------------------------------------------------------------- renderer
def test_the_wrapped_renderer_scrubs_console_lines() -> None:
    token = _jwt()
    render = redaction.ScrubbingRenderer(structlog.dev.ConsoleRenderer(colors=False))
    line = render(None, "debug", {"event": "got", "headers": {"Authorization": f"Bearer {token}"}})
    assert token not in line
    assert "got" in line


def test_the_wrapped_renderer_keeps_json_lines_valid() -> None:
    token = _jwt()
    render = redaction.ScrubbingRenderer(
        structlog.processors.JSONRenderer(serializer=lambda obj, **kw: json.dumps(obj, **kw).encode())
    )
    out = render(None, "debug", {"event": "token response", "body": {"access_token": token}})
    assert isinstance(out, bytes)
    assert token.encode() not in out
    assert json.loads(out)["event"] == "token response"


def test_the_wrapped_renderer_passes_a_stdlib_hand_off_through() -> None:
    hand_off = (({"event": "x"},), {"extra": {}})
    render = redaction.ScrubbingRenderer(lambda logger, name, event_dict: hand_off)
    assert render(None, "info", {"event": "x"}) is hand_off


# --------------------------------------------------------------------------------------------- chains
def _renderer(logger: object, name: str, event_dict: dict) -> str:
    return str(event_dict)


def test_with_redaction_puts_the_mask_secret_step_before_the_wrapped_renderer() -> None:
    chain = redaction.with_redaction([structlog.processors.add_log_level, _renderer])
    assert chain[:2] == [structlog.processors.add_log_level, redaction.blank_mask_secret]
    assert isinstance(chain[2], redaction.ScrubbingRenderer)
    assert chain[2].renderer is _renderer


def test_with_redaction_is_idempotent_even_across_a_second_copy_of_the_module() -> None:
    # Airflow's plugin loader imports every file of the plugins folder again under its bare name.
    path = Path(redaction.__file__)
    spec = importlib.util.spec_from_file_location("redaction_second_copy", path)
    assert spec is not None
    assert spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    once = redaction.with_redaction([_renderer])
    assert copy.with_redaction(once) == once
    assert redaction.with_redaction(once) == once


def test_with_redaction_leaves_an_empty_chain_alone() -> None:
    assert redaction.with_redaction([]) == []


# --------------------------------------------------------------------------------------------- install
@pytest.fixture
def isolated_logging() -> Iterator[None]:
    """Put structlog's configuration and every ProcessorFormatter back as they were."""
    saved = structlog.get_config()
    processors = list(saved["processors"])
    formatters = {}
    for handler in redaction._handlers():
        if isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter):
            formatters[handler.formatter] = handler.formatter.processors
    try:
        yield
    finally:
        structlog.configure(**{**saved, "processors": processors})
        for formatter, chain in formatters.items():
            formatter.processors = chain


@pytest.mark.usefixtures("isolated_logging")
def test_install_reaches_a_structlog_logger_that_was_bound_and_cached_before() -> None:
    out = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    log = structlog.get_logger()
    log.debug("before install")  # binds and caches the logger with the chain as it was
    secret = "Qx7#"  # too short for Airflow's masker, which skips values under 5 characters
    redaction.install()
    redaction.install()
    log.debug("Sending request", msg=MaskSecret(value=secret))
    assert "before install" in out.getvalue()
    assert "MaskSecret(value='***'" in out.getvalue()
    assert secret not in out.getvalue().split("before install", 1)[1]


@pytest.mark.usefixtures("isolated_logging")
def test_install_reaches_stdlib_handlers_formatted_by_structlog() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processor=structlog.dev.ConsoleRenderer(colors=False)))
    logger = logging.getLogger("tc_sentinel.tests.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    token = _jwt()
    try:
        redaction.install()
        logger.warning("retrying with Authorization: Bearer %s", token)
    finally:
        logger.removeHandler(handler)
    assert "retrying with Authorization: Bearer ***" in out.getvalue()
    assert token not in out.getvalue()
