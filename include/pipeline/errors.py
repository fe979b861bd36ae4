"""Errors that no retry can fix: the DAG fails the task at once (``AirflowFailException``) instead of retrying.

Adapters subclass :class:`PermanentError` for what they know to be permanent (bad credentials, a refused
permission, an unusable configuration); the core raises it for its own refusals (a mass retraction, too many
indicators rejected by the target). The message must name the connection or setting and what the service said.
"""

from __future__ import annotations


class PermanentError(RuntimeError):
    """A failure that retrying the same task with the same settings and data cannot change."""


class NotSupported(ValueError):
    """A target has no indicator for this value (Defender has no email type and refuses internal addresses): the
    row is planned ``skip`` with the message as its reason, never sent and never an error."""
