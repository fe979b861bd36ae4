"""Load efficiency: two loader processes of one identity against a rate-limited simulator, per sink.

Defender is measured against its import budget (the calls its 30-a-minute limit counts), with its window and batch
size scaled down like the other simulators' windows; indicators Defender has no type for (email addresses,
internal addresses) are not expected there.

The simulators enforce a scaled-down budget (``limit`` requests per ``window`` seconds) so a run spans several
windows in about a minute; the loaders' shared client-side limiter gets slightly less (``client_limit``). Figures:
admitted requests in the run's whole windows over what the server permits in them, the share of requests answered
429, and indicators lost (deduplicated ids the target does not hold afterwards).

Graph's simulator has no scaled window (only ``rate_limit_per_minute`` over 60 s), so the benchmark runs it on a
clock sped up by ``60 / window`` and scales the ``Retry-After`` of its 429s back to real seconds. Both clients run
as the Airflow hooks build them: with the shared client-side limiter (``SharedRateLimiter``) of their identity.
"""

from __future__ import annotations

import math
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import requests

from bench.common import Figure, load_average, start_worker
from bench.context import Context
from bench.data import SyntheticPages, extract_all, load_stage, transform_all
from include.pipeline.mappings import SUPPORTED_TYPES
from include.pipeline.snapshots import SnapshotStore
from include.transport.limiter import SharedRateLimiter
from simulators.defender import DefenderService
from simulators.graph import GraphService
from simulators.mslogin import LoginService
from simulators.sentinel import SentinelService
from simulators.server import HttpsServer, Request, Response
from simulators.tls import make_tls_material

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "bbbbbbbb-0000-4000-8000-00000000be4c"
WORKSPACE = "0a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9"
EFFICIENCY_TARGET = 0.90
THROTTLED_TARGET = 0.01
LOADERS = 2


@dataclass
class RequestLog:
    """Wraps one simulator handler: records (arrival time, status, method, path) of every request it answers.

    ``retry_after_scale`` rescales the ``Retry-After`` of 429 answers (Graph on a sped-up clock answers in its
    own seconds).
    """

    handler: Any
    retry_after_scale: float = 1.0
    entries: list[tuple[float, int, str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Request) -> Response | None:
        arrived = time.monotonic()
        response = self.handler(request)
        if response is None:
            return None
        if response.status == 429 and self.retry_after_scale != 1.0 and "Retry-After" in response.headers:
            seconds = float(response.headers["Retry-After"]) * self.retry_after_scale
            response.headers["Retry-After"] = str(max(1, math.ceil(seconds)))
        with self._lock:
            self.entries.append((arrived, response.status, request.method, request.path))
        return response


def whole_window_efficiency(admitted: list[float], limit: int, window: float) -> tuple[float | None, int, int]:
    """Admitted requests in the run's whole windows over the ``limit`` per window the server permits.

    Counting from the first admitted request, ``k`` whole windows fit before the last one; a sliding window admits
    at most ``k * limit`` in them, so the ratio is exact and at most 1. The tail (a partial window) is left out.

    Returns:
        ``(ratio or None when the run is shorter than one window, admitted in the whole windows, k)``.
    """
    if not admitted:
        return None, 0, 0
    times = sorted(admitted)
    start = times[0]
    whole = int((times[-1] - start) // window)
    if whole == 0:
        return None, 0, 0
    inside = sum(1 for t in times if t < start + whole * window)
    return inside / (whole * limit), inside, whole


def _defender_can_hold(table: Any) -> Any:
    import ipaddress

    def holdable(kind: str | None, value: str | None) -> bool:
        if kind == "email":
            return False
        if kind == "ip":
            try:
                return ipaddress.ip_address(str(value)).is_global
            except ValueError:
                return False
        return True

    return pa.array(
        [holdable(k, v) for k, v in zip(table["kind"].to_pylist(), table["value"].to_pylist(), strict=True)]
    )


def prepare(ctx: Context, rows: int, tag: str, sink: str = "") -> tuple[Path, list[str], set[str]]:
    """Deduplicated snapshots for each loader (one run id each) and the live external ids they hold."""
    root = ctx.workdir / f"load-{tag}-{rows}"
    store = SnapshotStore(str(root))
    run_ids = [f"loader-{i}" for i in range(LOADERS)]
    expected: set[str] = set()
    for index, run_id in enumerate(run_ids):
        if not store.exists("deduped", SUPPORTED_TYPES[-1], run_id):
            source = SyntheticPages(ctx.seed + 100 + index, rows, ctx.sizes["page_size"])
            extract_all(source, store, run_id)
            transform_all(store, run_id)
        for kind in SUPPORTED_TYPES:
            table = store.read("deduped", kind, run_id)
            # Inactive and false-positive indicators are retraction signals: nothing of ours to retract yet.
            live = pc.and_(table["active"], pc.invert(table["false_positive"]))
            if "deleted" in table.column_names:
                live = pc.and_(live, pc.invert(pc.fill_null(table["deleted"], False)))
            if sink == "defender":
                # What has already expired is not sent to Defender (it would refuse it); some values have no type.
                from bench.data import END

                unexpired = pc.fill_null(
                    pc.greater(table["expiration"], pa.scalar(END, table["expiration"].type)), True
                )
                live = pc.and_(pc.and_(live, _defender_can_hold(table)), unexpired)
            expected.update(table.filter(live).column("external_id").to_pylist())
    return root, run_ids, expected


def load(ctx: Context) -> list[Figure]:
    """Each sink with its shared client-side limiter, two loader processes of one identity; then Graph again with
    every request taking ``slow`` seconds to answer, as a real service's do, with the sink's default number of
    requests in flight and with one at a time (how it sent before)."""
    figures: list[Figure] = []
    for variant in ("sentinel", "graph", "defender"):
        figures.extend(_variant(ctx, variant, variant))
    slow = ctx.sizes["load"]["slow"]
    figures.extend(_variant(ctx, f"graph, answers taking {slow:g} s", "graph", slow=slow))
    figures.extend(_variant(ctx, f"graph, answers taking {slow:g} s, one at a time", "graph", slow=slow, in_flight=1))
    return figures


def _variant(ctx: Context, variant: str, sink: str, slow: float = 0.0, in_flight: int | None = None) -> list[Figure]:
    settings = dict(ctx.sizes["load"])
    if sink == "defender":
        scaled = settings.pop("defender")
        settings.update(scaled)
        settings["defender_rows"] = scaled["rows"]
    window, limit = settings["window"], settings["limit"]
    limited = True
    # A store per variant: with the lifecycle feature, a second load into the same store plans nothing to send.
    root, run_ids, expected = prepare(
        ctx, settings[f"{sink}_rows"], re.sub(r"[^a-z0-9]+", "-", variant).strip("-"), sink
    )
    tls = make_tls_material(ctx.workdir / "tls-ms")
    secret = secrets.token_urlsafe(24)
    login = LoginService()
    login.register(TENANT, CLIENT, secret)
    if sink == "sentinel":
        service: Any = SentinelService(login, {WORKSPACE}, rate_limit_per_minute=limit, rate_window_seconds=window)
        logged = RequestLog(service)
    elif sink == "defender":
        # Its clock stands in the generated data's month, so nothing has expired; only imports are budgeted.
        from bench.data import END

        offset = time.time() - END.timestamp()
        service = DefenderService(
            login,
            clock=lambda: time.time() - offset,
            capacity=10**7,
            rate_limits={"import": ((limit, 1.0),)},
            minute_seconds=window,
        )
        logged = RequestLog(service)
    else:
        speed = 60.0 / window
        service = GraphService(login, rate_limit_per_minute=limit, clock=lambda: time.monotonic() * speed)
        logged = RequestLog(service, retry_after_scale=1 / speed)
    server = HttpsServer([login, logged], tls).start()
    login.base_url = server.base_url
    # Every Graph API request takes ``slow`` seconds to answer (not the login); the server answers them side by side.
    slowness = server.slow(slow, lambda request: "/security/" in request.path)
    limiter_path = ctx.workdir / f"limiter-{time.monotonic_ns()}.json"
    try:
        load_avg = load_average()
        workers = [
            start_worker(
                "loader",
                {
                    "sink": sink,
                    "base_url": server.base_url,
                    "ca_file": str(tls.ca_file),
                    "tenant": TENANT,
                    "client_id": CLIENT,
                    "secret": secret,
                    "workspace": WORKSPACE,
                    "root": str(root),
                    "run_id": run_id,
                    "limiter_path": str(limiter_path) if limited else None,
                    "client_limit": settings["client_limit"],
                    "window": window,
                    "batch": settings.get("batch"),
                    "in_flight": in_flight,
                },
                ctx.workdir,
                timeout=settings["deadline"] * 3,
            )
            for run_id in run_ids
        ]
        results = [worker.wait() for worker in workers]
    finally:
        server.stop()
    if sink == "sentinel":
        stored = {key[2].removeprefix("indicator--") for key in service.objects if key[0] == WORKSPACE}
        duplicates = 0
    elif sink == "defender":
        from include.microsoft.defender.payload import tagged_id

        tags = [tagged_id(item.get("description")) for item in service.created_by(CLIENT)]
        stored, duplicates = {t for t in tags if t}, len(tags) - len({t for t in tags if t})
    else:
        ids = [item.get("externalId") for item in service.owned_by(CLIENT)]
        stored, duplicates = set(ids), len(ids) - len(set(ids))
    entries = logged.entries
    if sink == "defender":  # the budget counts import calls; listings have a budget of their own
        entries = [e for e in entries if e[3].endswith("/import")]
    total = len(entries)
    throttled = sum(1 for e in entries if e[1] == 429)
    admitted = [e[0] for e in entries if e[1] != 429]
    writes = sum(1 for e in entries if e[1] != 429 and e[2] != "GET")
    efficiency, inside, whole = whole_window_efficiency(admitted, limit, window)
    elapsed = (max(e[0] for e in entries) - min(e[0] for e in entries)) if entries else 0.0
    lost = len(expected - stored)
    errors = [e for r in results for e in r["errors"]]
    details = {
        "load_average": load_avg,
        "server_limit": f"{limit} per {window:g} s",
        "client_limit": f"{settings['client_limit']} per {window:g} s" if limited else None,
        "loaders": LOADERS,
        "answer_seconds": slow,
        "in_flight_per_loader": in_flight or "the sink's default",
        "most_answered_at_once": slowness.peak if slow else None,
        "requests": total,
        "throttled": throttled,
        "admitted": len(admitted),
        "admitted_writes": writes,
        "whole_windows": whole,
        "admitted_in_whole_windows": inside,
        "elapsed_s": round(elapsed, 2),
        "indicators": len(expected),
        "stored": len(stored),
        "graph_duplicates": duplicates,
        "indicators_per_s": round(len(expected) / elapsed) if elapsed else None,
        "indicators_per_request": round(len(expected) / len(admitted), 1) if admitted else None,
        "loader_errors": errors[:5],
        "loaders_detail": [
            {
                k: r.get(k)
                for k in ("seconds", "requests_sent", "throttled", "limiter_waited_s", "peak_rss_mb", "failed")
            }
            for r in results
        ],
    }
    share = throttled / total if total else 0.0
    return [
        Figure(
            f"load: {variant}",
            "admitted request rate / permitted (whole windows)",
            None if efficiency is None else round(efficiency * 100, 1),
            "%",
            f">= {EFFICIENCY_TARGET:.0%}",
            None if efficiency is None else efficiency >= EFFICIENCY_TARGET,
            details,
        ),
        Figure(
            f"load: {variant}",
            "  requests answered 429",
            round(share * 100, 2),
            "%",
            f"<= {THROTTLED_TARGET:.0%}",
            share <= THROTTLED_TARGET,
            {"throttled": throttled, "requests": total},
        ),
        Figure(
            f"load: {variant}",
            "  indicators lost",
            lost,
            "indicators",
            "= 0",
            lost == 0 and not errors,
            {"expected": len(expected), "stored": len(stored), "errors": errors[:5]},
        ),
        Figure(
            f"load: {variant}",
            "  write requests / all admitted",
            round(writes / len(admitted) * 100, 1) if admitted else None,
            "%",
            "",
            None,
        ),
    ]


def make_sink(args: dict[str, Any]) -> tuple[Any, Any, SharedRateLimiter | None]:
    """``(sink, client, limiter)`` for the simulator described by ``args`` (as the Airflow hooks would build them)."""
    from include.microsoft.auth import ARM_SCOPE, GRAPH_SCOPE, TokenProvider
    from include.microsoft.defender import DEFENDER_SCOPE, DefenderClient, DefenderSink
    from include.microsoft.graph import GraphClient, GraphSink
    from include.microsoft.sentinel import SentinelClient, SentinelSink

    limiter = None
    if args.get("limiter_path"):
        limiter = SharedRateLimiter(Path(args["limiter_path"]), args["client_limit"], args["window"])

    def trusting(session: requests.Session) -> requests.Session:
        # requests lets REQUESTS_CA_BUNDLE (set machine-wide here) override a session's CA file; without
        # trust_env the session keeps the simulator's CA. Loopback needs no proxy settings either.
        session.verify = args["ca_file"]
        session.trust_env = False
        return session

    session = trusting(requests.Session())
    if args["sink"] == "defender":
        provider = TokenProvider(
            args["tenant"],
            args["client_id"],
            args["secret"],
            DEFENDER_SCOPE,
            authority_host=args["base_url"],
            http_client=session,
        )
        api = trusting(requests.Session())
        client = DefenderClient(args["base_url"], provider, client_id=args["client_id"], session=api, limiter=limiter)
        return DefenderSink(client, batch_size=int(args.get("batch") or 500), capacity=10**7), client, limiter
    if args["sink"] == "sentinel":
        provider = TokenProvider(
            args["tenant"],
            args["client_id"],
            args["secret"],
            ARM_SCOPE,
            authority_host=args["base_url"],
            http_client=session,
        )
        api = trusting(requests.Session())
        client: Any = SentinelClient(args["base_url"], args["workspace"], provider, session=api, limiter=limiter)
        return SentinelSink(client), client, limiter
    provider = TokenProvider(
        args["tenant"],
        args["client_id"],
        args["secret"],
        GRAPH_SCOPE,
        authority_host=args["base_url"],
        http_client=session,
    )
    api = trusting(requests.Session())
    client = GraphClient(args["base_url"], provider, session=api, limiter=limiter)
    in_flight = {"in_flight": int(args["in_flight"])} if args.get("in_flight") else {}
    return GraphSink(client, **in_flight), client, limiter


def run_loader(args: dict[str, Any]) -> dict[str, Any]:
    """The body of one loader process (``bench.worker loader``): ``stages.load`` of every type of one run."""
    store = SnapshotStore(args["root"])
    sink, client, limiter = make_sink(args)
    errors: list[str] = []
    failed = 0
    started = time.perf_counter()
    for kind in SUPPORTED_TYPES:
        try:
            summary = load_stage(sink, store, args["run_id"], kind)
            failed += summary["failed"]
        except Exception as exc:  # the figure is what was lost; the error is reported, not raised
            errors.append(f"{kind}: {type(exc).__name__}: {str(exc)[:200]}")
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "requests_sent": client.requests_sent,
        "throttled": getattr(client, "throttled", None),
        "failed": failed,
        "errors": errors,
        "limiter_waited_s": round(limiter.waited, 2) if limiter is not None else None,
    }
