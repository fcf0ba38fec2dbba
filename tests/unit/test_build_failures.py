"""Build failure classification, table-driven: what is retried (infrastructure) and what is
final (the model)."""

from __future__ import annotations

import pytest

from optimodel.api.report import BuildSummary
from optimodel.operator.failures import classify

JOB = {"metadata": {"name": "m-build-abc"},
       "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                  "message": "Job has reached the specified backoff limit"}]}}
DEADLINE_JOB = {"metadata": {"name": "m-build-abc"},
                "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                           "message": "Job was active longer than specified deadline"}]}}


def pod(terminated=None, reason=None, conditions=()):
    status = {"conditions": list(conditions)}
    if reason:
        status["reason"] = reason
    if terminated is not None:
        status["containerStatuses"] = [{"name": "builder", "state": {"terminated": terminated}}]
    return {"metadata": {"name": "m-build-abc-xyz"}, "status": status}


def summary(reason, message="x"):
    return BuildSummary(succeeded=False, build_key="k", reason=reason, message=message)


@pytest.mark.parametrize("job,pods,summ,reason,retryable", [
    (JOB, [pod({"exitCode": 137, "reason": "OOMKilled"})], None, "OOMKilled", True),
    (JOB, [pod({"exitCode": 143}, conditions=[{"type": "DisruptionTarget", "status": "True",
                                               "reason": "PreemptionByScheduler", "message": "preempted"}])],
     summary("Terminated"), "PreemptionByScheduler", True),
    (JOB, [pod(None, reason="Evicted")], None, "Evicted", True),
    (JOB, [pod({"exitCode": 143})], summary("Terminated"), "Terminated", True),
    (JOB, [pod({"exitCode": 17})], summary("OutOfMemory"), "OutOfMemory", True),
    (DEADLINE_JOB, [pod({"exitCode": 143})], summary("Terminated"), "DeadlineExceeded", True),
    (JOB, [], None, "PodLost", True),
    (JOB, [pod({"exitCode": 139, "reason": "Error"})], None, "BackoffLimitExceeded", True),
    # The builder judged the model: final.
    (JOB, [pod({"exitCode": 16})], summary("AccuracyGateFailed"), "AccuracyGateFailed", False),
    (JOB, [pod({"exitCode": 10})], summary("ModelNotFound"), "ModelNotFound", False),
    (JOB, [pod({"exitCode": 19})], summary("AccessDenied"), "AccessDenied", False),
    (JOB, [pod({"exitCode": 20})], summary("BuildKeyMismatch"), "BuildKeyMismatch", False),
    (JOB, [pod({"exitCode": 1})], summary("InternalError"), "InternalError", False),
    (JOB, [pod({"exitCode": 12})], None, "UnsupportedModel", False),  # code known, summary lost
    # A deadline beats the summary the SIGTERM'd builder wrote: retried, named as a deadline.
    (DEADLINE_JOB, [], None, "DeadlineExceeded", True),
], ids=["oom-killed", "preempted", "evicted", "sigterm", "builder-oom", "deadline", "pod-lost",
        "crash-no-summary", "gate", "not-found", "access-denied", "key-mismatch", "internal",
        "exit-code-only", "deadline-no-pod"])
def test_classify(job, pods, summ, reason, retryable):
    failure = classify(job, pods, summ)
    assert (failure.reason, failure.retryable) == (reason, retryable), failure
    assert failure.message
