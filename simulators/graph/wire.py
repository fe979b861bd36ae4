"""Graph's answers on the wire: error and throttling bodies, request bodies, ``$skiptoken``s and ``$filter``."""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import uuid
from collections.abc import Callable
from typing import Any

from simulators import odata
from simulators.graph.schema import MAX_BATCH, PROPERTIES, GraphValidationError
from simulators.server import Request, Response


def parse_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """Compile an OData ``$filter`` of ``prop eq|ne literal`` terms joined by ``and``/``or`` into a predicate.

    Raises:
        GraphValidationError: the expression uses anything else.
    """
    try:
        return odata.compile_filter(odata.parse_filter(text), _term)
    except odata.ODataError as exc:
        raise GraphValidationError(str(exc)) from None


def _term(node: odata.Node) -> Callable[[dict[str, Any]], bool]:
    if isinstance(node, odata.Not):
        raise GraphValidationError("Invalid $filter: 'not' is not supported.")
    if isinstance(node, odata.Call):
        raise GraphValidationError(f"Invalid $filter: function '{node.function}' is not supported.")
    if node.field not in PROPERTIES:
        raise GraphValidationError(f"Invalid $filter: '{node.field}' is not a tiIndicator property.")
    if isinstance(node, odata.In) or node.op not in ("eq", "ne"):
        op = "in" if isinstance(node, odata.In) else node.op
        raise GraphValidationError(f"Invalid $filter: operator '{op}' is not supported.")
    prop, literal = node.field, node.value
    if literal is not None and not isinstance(literal, str | int):
        raise GraphValidationError("Invalid $filter: expected a literal.")
    if node.op == "eq":
        return lambda item: item.get(prop) == literal
    return lambda item: item.get(prop) != literal


def graph_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """A Graph error body: ``{"error": {"code", "message", "innerError": {...}}}``."""
    return Response(
        status,
        {
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "request-id": str(uuid.uuid4()),
                    "date": now_iso(),
                    "client-request-id": str(uuid.uuid4()),
                },
            }
        },
        headers or {},
    )


def too_many_requests(retry_after: int | None) -> Response:
    """Graph's documented throttling answer (concepts/throttling.md)."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Response(
        429,
        {
            "error": {
                "code": "TooManyRequests",
                "message": "Please retry again later.",
                "innerError": {
                    "code": "429",
                    "date": now_iso(),
                    "message": "Please retry after",
                    "request-id": str(uuid.uuid4()),
                    "status": "429",
                },
            }
        },
        headers,
    )


_FAULT_CODES = {500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable", 504: "GatewayTimeout"}


def fault_response(status: int, retry_after: int | None) -> Response:
    """The answer of an injected fault: Graph's throttling body for 429, its error body otherwise."""
    if status == 429:
        return too_many_requests(retry_after)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return graph_error(status, _FAULT_CODES.get(status, "UnknownError"), "Simulated failure.", headers)


def item_error(failed_id: str, external_id: Any, exc: GraphValidationError) -> dict[str, Any]:
    # Invented shape (the 206 per-item body is undocumented): the error sits at the failing item's index. Without a
    # code, the shape seen in the field (security-api-solutions #149): the refusal text as the id, no Error element.
    if not exc.code:
        return {"id": failed_id, "externalId": external_id}
    return {"id": failed_id, "externalId": external_id, "Error": {"code": exc.code, "message": str(exc)}}


def result_info(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "subcode": 0}


def not_found(indicator_id: str) -> Response:
    return graph_error(404, "NotFound", f"Indicator {indicator_id} was not found.")


def method_not_allowed() -> Response:
    return graph_error(405, "Request_BadRequest", "The HTTP method is not allowed for this resource.")


def json_object(request: Request) -> dict[str, Any]:
    try:
        body = request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise GraphValidationError("The body provided had an error during serialization.") from exc
    if not isinstance(body, dict):
        raise GraphValidationError("The body provided had an error during serialization.")
    return body


def batch_values(request: Request) -> list[Any]:
    values = json_object(request).get("value")
    if not isinstance(values, list):
        raise GraphValidationError("The body must hold a 'value' collection.")
    if len(values) > MAX_BATCH:
        raise GraphValidationError(f"There's a limit of {MAX_BATCH} tiIndicators per request.")
    return values


def count_items(request: Request) -> int:
    if request.method == "GET":
        return 0
    if request.method == "DELETE":
        return 1
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        return 0
    if isinstance(body, dict) and isinstance(body.get("value"), list):
        return len(body["value"])
    return 1


def encode_skiptoken(offset: int) -> str:
    raw = json.dumps({"o": offset, "n": secrets.token_hex(4)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_skiptoken(token: str) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        return int(json.loads(base64.urlsafe_b64decode(padded))["o"])
    except (ValueError, KeyError, TypeError) as exc:
        raise GraphValidationError("Invalid $skiptoken.") from exc


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
