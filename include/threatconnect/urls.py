"""ThreatConnect URLs: query strings as the docs write them, dates as TQL and v2 filters take them, origins."""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote, urlsplit

from include.pipeline import times

# Kept literal in query values we build by hand: the docs send filters as ``active%3Dtrue,active%3Dfalse``.
_QUERY_SAFE = ","

Origin = tuple[str, str, int | None]


def iso_z(moment: dt.datetime) -> str:
    """Format an aware datetime as ThreatConnect's ISO-8601 UTC form ``YYYY-MM-DDTHH:MM:SSZ``.

    Args:
        moment: An aware datetime (a naive one is taken as UTC).

    Returns:
        The formatted string, truncated to whole seconds.
    """
    return times.iso(moment, "seconds")


def query(params: list[tuple[str, str]]) -> str:
    """A query string built by hand (not requests' ``params=``), so the target is exactly what the docs show.

    %20 for spaces, %3D inside filters. requests leaves an already-encoded URL alone, and HmacAuth signs what is
    sent anyway.
    """
    return "&".join(f"{quote(key, safe=_QUERY_SAFE)}={quote(value, safe=_QUERY_SAFE)}" for key, value in params)


def origin(url: str) -> Origin:
    """``(scheme, host, port)`` of a URL, lower-cased, with the scheme's default port as None.

    Two spellings of one origin (``TC.example`` and ``tc.example:443``) compare equal.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1  # not a port: never equal to a real origin
    return scheme, parts.hostname or "", None if port == {"https": 443, "http": 80}.get(scheme) else port


def shown_origin(value: Origin) -> str:
    """An origin as a person would write it."""
    scheme, host, port = value
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")
