"""Defender's answers on the wire: error bodies, request bodies, which API a request calls, and ``$filter``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from simulators import odata
from simulators.defender.schema import FILTER_FIELDS, PREFIX, DefenderRequestError
from simulators.server import Request, Response


def parse_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """Compile an OData ``$filter`` of ``field eq|ne literal`` terms (strings compare case-insensitively).

    Raises:
        DefenderRequestError: anything else, or a field the API does not filter on.
    """
    try:
        return odata.compile_filter(odata.parse_filter(text), _term)
    except odata.ODataError as exc:
        raise DefenderRequestError(str(exc)) from None


def _term(node: odata.Node) -> Callable[[dict[str, Any]], bool]:
    if isinstance(node, odata.Not):
        raise DefenderRequestError("Invalid $filter: only 'field eq|ne literal' is supported.")
    name = node.field
    if name not in FILTER_FIELDS:
        raise DefenderRequestError(f"Invalid $filter: '{name}' cannot be filtered on.")
    literal = getattr(node, "value", None)
    if (
        not isinstance(node, odata.Compare)
        or node.op not in ("eq", "ne")
        or (literal is not None and not isinstance(literal, str | int))
    ):
        raise DefenderRequestError("Invalid $filter: only 'field eq|ne literal' is supported.")

    def equal(item: dict[str, Any]) -> bool:
        held = item.get(name)
        if isinstance(held, str) and isinstance(literal, str):
            return held.lower() == literal.lower()
        return held == literal

    return equal if node.op == "eq" else (lambda item: not equal(item))


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """Defender's error body (common-errors.md): ``{"error": {"code", "message", "target"}}``."""
    return Response(status, {"error": {"code": code, "message": message, "target": str(uuid.uuid4())}}, headers or {})


_FAULT_CODES = {
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


def fault_response(status: int, retry_after: int | None) -> Response:
    """The answer of an injected fault, in Defender's error body."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return error(status, _FAULT_CODES.get(status, "UnknownError"), "Simulated failure.", headers)


def api_of(request: Request) -> str:
    rest = request.path[len(PREFIX) :].strip("/")
    if rest.lower() == "import":
        return "import"
    if rest.lower() == "batchdelete":
        return "batchdelete"
    if not rest:
        return "list" if request.method == "GET" else "submit"
    return "delete"


def public(stored: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, list) else v) for k, v in stored.items() if not k.startswith("_")}


def json_object(request: Request) -> dict[str, Any]:
    try:
        body = request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise DefenderRequestError("The request body is not valid JSON.", "InvalidRequestBody") from exc
    if not isinstance(body, dict):
        raise DefenderRequestError("The request body must be a JSON object.", "InvalidRequestBody")
    return body


def count_items(request: Request) -> int:
    if request.method == "GET":
        return 0
    if request.method == "DELETE":
        return 1
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        return 0
    if isinstance(body, dict):
        for key in ("Indicators", "IndicatorIds"):
            if isinstance(body.get(key), list):
                return len(body[key])
    return 1
