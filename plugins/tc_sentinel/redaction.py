"""Keep Connection secrets and bearer tokens out of every log line this process renders, DEBUG included.

Airflow 3.3's in-process task runner (``airflow dags test``, ``dag.test()``) logs each request its task sends to the
supervisor at DEBUG, ``Sending request ... msg=MaskSecret(value='<secret>')`` (``InProcessSupervisorComms.send`` in
``airflow/sdk/execution_time/supervisor.py``), and the mask request for a Connection's password is one of them. The
secrets masker already knows that password, but it only walks strings, dicts and lists, so the pydantic message goes
to the renderer unmasked. ``install()`` adds two steps to the structlog chain and to every stdlib
``ProcessorFormatter``: MaskSecret values are blanked before rendering, and the rendered line is scrubbed of every
value Airflow's maskers know and of anything shaped like a credential (bearer token, JWT, ``access_token=...``).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any

import structlog

MASK = "***"
# Set on everything install() adds: the plugin loader imports this file a second time under the bare name
# ``redaction``, so "already installed" cannot be an identity or isinstance check.
_MARK = "_tc_sentinel_redaction"
# Both copies of Airflow's masker: the Task SDK's (fed by ``mask_secret`` and MaskSecret messages) and the core's
# (fed by the core secrets backends); read only if already imported.
_MASKER_MODULES = ("airflow.sdk._shared.secrets_masker", "airflow._shared.secrets_masker")

_CREDENTIAL = re.compile(
    # RFC 6750 ``Authorization: Bearer <b64token>``
    r"(?P<bearer>\b(?i:bearer)\s+)[A-Za-z0-9\-._~+/]+=*"
    # a JWT (Entra ID access tokens are JWTs): ``eyJ`` is base64url for ``{"``; no boundary, so an URL-encoded
    # ``...%3DeyJ...`` is caught too
    r"|(?P<jwt>eyJ)[A-Za-z0-9\-_.]+"
    # OAuth fields in a JSON body, a dict repr or a form body
    r"|(?P<field>\b(?:access_token|refresh_token|id_token|client_secret|client_assertion)[\"']?\s*[:=]\s*[\"']?)"
    r"[^\"'&\s,;}]+"
    # ThreatConnect's signed header ``TC <access id>:<base64 HMAC>``: replayable until its timestamp expires
    r"|(?P<tc>\bTC [^\s:'\"]+:)[A-Za-z0-9+/]{20,}={0,2}"
)


def _keep_prefix(match: re.Match[str]) -> str:
    prefix = next(p for p in match.groups() if p is not None)
    return prefix + MASK


def _masker_redactors() -> Iterator[Callable[[str], Any]]:
    for name in _MASKER_MODULES:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "redact"):
            yield module.redact


def scrub(text: str) -> str:
    """``text`` with every value Airflow's secrets maskers know, and every credential-shaped token, masked."""
    for redact in _masker_redactors():
        redacted = redact(text)
        if isinstance(redacted, str):
            text = redacted
    return _CREDENTIAL.sub(_keep_prefix, text)


def _is_mask_secret(value: Any) -> bool:
    return getattr(value, "type", None) == "MaskSecret" and hasattr(value, "value")


def blank_mask_secret(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: a MaskSecret message is logged with its value replaced by ``***``.

    Its value is by definition something to hide, even one the masker would skip (too short, or named after an
    insensitive key).
    """
    for key, value in event_dict.items():
        if _is_mask_secret(value):
            copy = getattr(value, "model_copy", None)
            event_dict[key] = copy(update={"value": MASK}) if copy else f"MaskSecret(value={MASK!r})"
    return event_dict


setattr(blank_mask_secret, _MARK, True)


class ScrubbingRenderer:
    """Wrap a chain's final renderer so that what it renders (str, or bytes for JSON logs) passes ``scrub``."""

    def __init__(self, renderer: Callable[..., Any]) -> None:
        self.renderer = renderer
        setattr(self, _MARK, True)

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
        rendered = self.renderer(logger, method_name, event_dict)
        if isinstance(rendered, str):
            return scrub(rendered)
        if isinstance(rendered, bytes | bytearray):
            return scrub(bytes(rendered).decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
        return rendered  # e.g. stdlib's wrap_for_formatter tuple: the handler's formatter renders (and scrubs) it


def with_redaction(chain: Sequence[Any]) -> list[Any]:
    """``chain`` (processors, renderer last) with the MaskSecret step before the renderer and the renderer
    wrapped; unchanged if it already has them or is empty."""
    chain = list(chain)
    if not chain or any(getattr(p, _MARK, False) for p in chain):
        return chain
    return [*chain[:-1], blank_mask_secret, ScrubbingRenderer(chain[-1])]


def _handlers() -> Iterator[logging.Handler]:
    yield from logging.root.handlers
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            yield from logger.handlers


def install() -> None:
    """Add the redaction to this process's logging as it is configured now; idempotent and cheap.

    Call it before a Connection is read: Airflow reconfigures logging when a task process starts, so installing at
    import time could be undone.
    """
    processors = structlog.get_config()["processors"]
    redacted = with_redaction(processors)
    if redacted != list(processors):
        if isinstance(processors, list):
            # In place: loggers already bound (and cached) share this very list.
            processors[:] = redacted
        else:
            structlog.configure(processors=redacted)
    for handler in _handlers():
        formatter = handler.formatter
        if isinstance(formatter, structlog.stdlib.ProcessorFormatter):
            formatter.processors = with_redaction(formatter.processors)
