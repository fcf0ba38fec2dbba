"""Why a build Job failed, and whether trying again can help: a pure function of what we read.

Two kinds of failure, handled differently:

- **Infrastructure**: the build never got a fair run. The pod was OOM-killed, evicted or
  preempted, its node was lost, the Job hit its deadline, the builder was terminated (SIGTERM).
  These are retried with backoff, up to a limit, in a new Job.
- **Model**: the builder ran and judged the model: a bad source, an export that fails, a gate
  missed, a key mismatch (version skew). The same inputs give the same answer, so these stay
  final until the user changes the spec or asks for a rebuild (``optimodel.dev/rebuild``).
"""

from __future__ import annotations

from dataclasses import dataclass

from optimodel.api.report import EXIT_CODES, BuildSummary

INFRASTRUCTURE_SUMMARY_REASONS = frozenset({"Terminated", "OutOfMemory"})
"""Builder-reported reasons that are about the pod's resources or life, not about the model."""

INFRASTRUCTURE_POD_REASONS = frozenset({
    "Evicted", "Preempted", "Preempting", "NodeLost", "Shutdown", "Terminated", "NodeShutdown",
    "UnexpectedAdmissionError", "OutOfcpu", "OutOfmemory", "OutOfpods",
})
"""``pod.status.reason`` values the kubelet and node lifecycle set when they, not the build, end a pod."""

REASON_BY_EXIT_CODE = {code: reason for reason, code in EXIT_CODES.items()}


@dataclass(frozen=True)
class Failure:
    reason: str
    message: str
    retryable: bool  # True = infrastructure


def _terminated(pod: dict) -> dict:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == "builder":
            return ((cs.get("state") or {}).get("terminated")
                    or (cs.get("lastState") or {}).get("terminated") or {})
    return {}


def classify(job: dict, pods: list[dict], summary: BuildSummary | None) -> Failure:
    """Classify a failed build Job from the Job, its pods (newest first) and the builder's summary."""
    name = job["metadata"]["name"]
    pod = pods[0] if pods else None
    if pod is not None:
        status = pod.get("status") or {}
        terminated = _terminated(pod)
        if terminated.get("reason") == "OOMKilled":
            return Failure("OOMKilled", f"the builder container of {pod['metadata']['name']} was "
                           "killed for exceeding its memory limit (raise the operator's builder_memory)", True)
        for cond in status.get("conditions") or []:
            if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
                return Failure(cond.get("reason") or "Disrupted",
                               f"pod {pod['metadata']['name']} was disrupted: "
                               f"{cond.get('message') or cond.get('reason')}", True)
        if status.get("reason") in INFRASTRUCTURE_POD_REASONS:
            return Failure(status["reason"], f"pod {pod['metadata']['name']}: "
                           f"{status.get('message') or status['reason']}", True)
    conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []
                  if c.get("status") == "True"}
    failed = conditions.get("Failed") or {}
    if failed.get("reason") == "DeadlineExceeded":  # before the summary: the builder only saw SIGTERM
        return Failure("DeadlineExceeded", f"Job {name} ran longer than its activeDeadlineSeconds "
                       "(raise the operator's build_active_deadline_seconds if builds need longer)", True)
    if summary is not None and not summary.succeeded:
        reason = summary.reason or "BuildFailed"
        return Failure(reason, summary.message or reason, reason in INFRASTRUCTURE_SUMMARY_REASONS)
    if pod is None:
        return Failure("PodLost", f"Job {name} failed and its pod is gone (node lost or pod deleted): "
                       f"{failed.get('message') or failed.get('reason') or 'no pod'}", True)
    code = _terminated(pod).get("exitCode")
    if code in REASON_BY_EXIT_CODE and REASON_BY_EXIT_CODE[code] not in ("InternalError",):
        reason = REASON_BY_EXIT_CODE[code]
        return Failure(reason, f"builder exited with code {code} ({reason}) without a readable summary",
                       reason in INFRASTRUCTURE_SUMMARY_REASONS)
    detail = failed.get("message") or failed.get("reason") or "failed"
    # No summary, no known exit code: killed (137), crashed, or never started. Retrying is cheap
    # next to leaving the model failed for a fault we cannot see; the attempt limit bounds it.
    return Failure(failed.get("reason") or "BuildFailed",
                   f"Job {name}: {detail} (builder exit code {code if code is not None else 'unknown'})", True)
