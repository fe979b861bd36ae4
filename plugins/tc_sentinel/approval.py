"""The approval gate for mass retraction as an Airflow human-in-the-loop task (standard provider's ApprovalOperator).

The request (subject, body, timeout) is built by ``include/pipeline/approval.py`` in the task before the gate
(``held_retractions``) and read here from its XCom when the gate runs, so the timeout can be a run setting (the
``approval_timeout_hours`` param or Variable) rather than a value fixed when the DAG file is parsed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

#: The task that builds the request; the gate shows what it returned.
REQUEST_TASK = "held_retractions"


class RetractionApproval(ApprovalOperator):
    """Ask a person to approve the run's held retractions: Approve runs ``retract``; Reject or the timeout (the
    default answer is Reject) skips it, and the rest of the run finishes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            subject="Approve the retractions held by the retraction guard?",
            defaults=ApprovalOperator.REJECT,
            # Replaced by the run's setting in execute; given here so that execution_timeout keeps bounding the
            # task's own work instead of being taken as the response timeout (the provider's old convention).
            response_timeout=dt.timedelta(hours=24),
            **kwargs,
        )

    def execute(self, context: Any) -> Any:
        request = context["ti"].xcom_pull(task_ids=REQUEST_TASK)
        self.subject = request["subject"]
        self.body = request["body"]
        self.response_timeout = dt.timedelta(hours=float(request["timeout_hours"]))
        self.log.info("asking for approval (timeout %s): %s", self.response_timeout, self.subject)
        return super().execute(context)


def approved(answer: Any) -> bool:
    """Whether the gate's XCom (``chosen_options``…) says a person approved; a timeout answers Reject."""
    return isinstance(answer, dict) and list(answer.get("chosen_options") or []) == [ApprovalOperator.APPROVE]
