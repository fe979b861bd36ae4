"""The Sink interface, declared by the core (``include.pipeline.ports``) and re-exported for the Microsoft sinks."""

from include.pipeline.ports import FAILED, OK, REJECTED, Sink, SinkResult, content_hash

__all__ = ["FAILED", "OK", "REJECTED", "Sink", "SinkResult", "content_hash"]
