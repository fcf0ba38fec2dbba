"""The build of one key: find or create its Job, explain a wait, read the outcome, retry.

A build key has one Job per attempt (``<name>-build-<key10>``, then ``-r1``, ``-r2``, ...). A
failed Job is final for that attempt; an infrastructure failure (see ``failures``) makes the next
attempt after a backoff, up to ``build_max_attempts``. A model failure is final until the key
changes (spec edit, or a new ``optimodel.dev/rebuild`` annotation).

The builder's summary is read from the pod's termination message and copied onto the Job as an
annotation, so the outcome survives the pod's garbage collection. A completed Job whose summary
is lost anyway is re-run: the builder finds its own ``report.json`` in the artifact store and
answers at once (cache hit), so a lost status is rebuilt from the store without the operator
holding store credentials.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
from dataclasses import dataclass

from pydantic import ValidationError

from optimodel.api.report import BuildSummary
from optimodel.operator import failures, metrics
from optimodel.operator import manifests as m
from optimodel.operator.conditions import pod_problem
from optimodel.operator.kube import Kube, controlled_by
from optimodel.operator.settings import OperatorSettings

log = logging.getLogger("optimodel.builds")


@dataclass
class BuildOutcome:
    state: str  # Pending | Running | Retrying | Succeeded | Failed
    job: str
    summary: BuildSummary | None = None
    reason: str | None = None
    message: str | None = None
    attempt: int = 0
    requeue_after: float | None = None


def _conditions(job: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (job.get("status") or {}).get("conditions") or []
            if c.get("status") == "True"}


def finished(job: dict) -> bool:
    return bool({"Complete", "Failed"} & _conditions(job).keys())


def attempt_of(job: dict) -> int:
    try:
        return int((job["metadata"].get("annotations") or {}).get(m.ATTEMPT_ANNOTATION, "0"))
    except ValueError:
        return 0


def key_of(job: dict) -> str | None:
    return (job["metadata"].get("annotations") or {}).get(m.KEY_ANNOTATION)


def model_jobs(kube: Kube, model: m.ModelRef) -> list[dict]:
    """Build Jobs this model controls (label-selected, then owner-checked)."""
    selector = f"{m.MODEL_LABEL}={model.name},app.kubernetes.io/component=builder"
    return [j for j in kube.list("batch/v1", "Job", model.namespace, label_selector=selector)
            if controlled_by(j, model.uid)]


def retry_delay(attempt: int, settings: OperatorSettings) -> float:
    """Wait after failed ``attempt`` (0-based) before the next: doubling, capped, +-10 % jitter."""
    base = min(settings.build_retry_max_seconds, settings.build_retry_base_seconds * (2 ** attempt))
    return base * random.uniform(0.9, 1.1)


def _finished_at(job: dict) -> dt.datetime | None:
    for cond in _conditions(job).values():
        stamp = cond.get("lastTransitionTime")
        if stamp:
            return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return None


def step(kube: Kube, settings: OperatorSettings, model: m.ModelRef, key: str,
         jobs: list[dict]) -> BuildOutcome:
    """Advance the build of ``key`` by one level-triggered step and report where it stands."""
    mine = sorted((j for j in jobs if key_of(j) == key), key=attempt_of)
    if not mine:
        return _create(kube, settings, model, key, 0, "created")
    job = mine[-1]
    name, attempt = job["metadata"]["name"], attempt_of(job)
    if not finished(job):
        problem = pod_problem(_pods(kube, model.namespace, name))
        if problem:
            return BuildOutcome("Pending", name, reason="BuildPending", attempt=attempt,
                                message=f"Build Job {name} is waiting: {problem}")
        return BuildOutcome("Running", name, attempt=attempt, message=f"Build Job {name} running")

    pods = _pods(kube, model.namespace, name)
    summary = _summary(kube, job, pods)
    if "Complete" in _conditions(job):
        if summary is None:
            if pods:  # the builder ran but wrote no summary: a builder bug, not worth a loop
                return BuildOutcome("Failed", name, reason="ReportMissing", attempt=attempt,
                                    message=f"Build Job {name} completed without a valid build summary "
                                    "in its termination message")
            # Summary lost with the pod: re-run; the builder answers from report.json at once.
            return _next_attempt(kube, settings, model, key, job, failures.Failure(
                "ReportMissing", f"the summary of Job {name} was lost with its pod; re-reading "
                "the build report from the artifact store", True), immediate=True)
        if summary.build_key and summary.build_key != key:
            return _key_mismatch(name, key, summary, attempt)
        if summary.succeeded and summary.engine:
            return BuildOutcome("Succeeded", name, summary, attempt=attempt,
                                message=f"Engine {summary.engine.precision}/{summary.engine.target} built")
        return BuildOutcome("Failed", name, summary, reason="ReportMissing", attempt=attempt,
                            message=f"Build Job {name} completed but its summary reports no engine")
    if (summary is not None and summary.build_key and summary.build_key != key
            and summary.reason != "BuildKeyMismatch"):  # the builder's own refusal says it best
        return _key_mismatch(name, key, summary, attempt)
    failure = failures.classify(job, pods, summary)
    if not failure.retryable:
        return BuildOutcome("Failed", name, summary, reason=failure.reason, message=failure.message,
                            attempt=attempt)
    return _next_attempt(kube, settings, model, key, job, failure)


def _key_mismatch(job: str, key: str, summary: BuildSummary, attempt: int) -> BuildOutcome:
    return BuildOutcome("Failed", job, summary, reason="BuildKeyMismatch", attempt=attempt, message=(
        f"the builder reported key {summary.build_key[:12]} for Job {job}, which was asked for key "
        f"{key[:12]}: operator and builder versions disagree; upgrade both images together"))


def _next_attempt(kube: Kube, settings: OperatorSettings, model: m.ModelRef, key: str, job: dict,
                  failure: failures.Failure, immediate: bool = False) -> BuildOutcome:
    name, attempt = job["metadata"]["name"], attempt_of(job)
    if attempt + 1 >= settings.build_max_attempts:
        return BuildOutcome("Failed", name, reason=failure.reason, attempt=attempt, message=(
            f"{failure.message} (gave up after {attempt + 1} attempts; annotate the model with "
            f"{m.REBUILD_ANNOTATION}=<any new value> to try again)"))
    delay = 0.0 if immediate else retry_delay(attempt, settings)
    ended = _finished_at(job)
    waited = (dt.datetime.now(dt.timezone.utc) - ended).total_seconds() if ended else delay
    if waited < delay:
        left = delay - waited
        return BuildOutcome("Retrying", name, reason="BuildRetrying", attempt=attempt, requeue_after=left,
                            message=f"attempt {attempt + 1}/{settings.build_max_attempts} failed: "
                            f"{failure.reason}: {failure.message}; retrying in {left:.0f}s")
    metrics.inc("optimodel_builds_total", event="retried")
    return _create(kube, settings, model, key, attempt + 1,
                   f"created after attempt {attempt + 1} failed ({failure.reason})")


def _create(kube: Kube, settings: OperatorSettings, model: m.ModelRef, key: str, attempt: int,
            why: str) -> BuildOutcome:
    job = m.builder_job(model, key, settings, attempt)
    name = job["metadata"]["name"]
    if kube.create(job) is not None:  # None: it exists already (a racing reconcile, a restart)
        metrics.inc("optimodel_builds_total", event="created")
        log.info("build Job %s/%s %s for key %s", model.namespace, name, why, key[:10])
    return BuildOutcome("Running", name, attempt=attempt, message=f"Build Job {name} {why}")


def _pods(kube: Kube, namespace: str, job_name: str) -> list[dict]:
    pods = kube.list("v1", "Pod", namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}")
    return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)


def _summary(kube: Kube, job: dict, pods: list[dict]) -> BuildSummary | None:
    """The builder's summary: from the Job's annotation, else the newest pod's termination
    message (then copied onto the Job, so it outlives the pod)."""
    recorded = (job["metadata"].get("annotations") or {}).get(m.SUMMARY_ANNOTATION)
    if recorded:
        parsed = _parse(recorded, job["metadata"]["name"])
        if parsed is not None:
            return parsed
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if cs.get("name") == "builder" and terminated.get("message"):
                summary = _parse(terminated["message"], pod["metadata"]["name"])
                if summary is not None:
                    kube.merge_patch("batch/v1", "Job", job["metadata"]["namespace"], job["metadata"]["name"],
                                     {"metadata": {"annotations": {m.SUMMARY_ANNOTATION: summary.to_termination_message()}}})
                    return summary
    return None


def _parse(text: str, where: str) -> BuildSummary | None:
    try:
        return BuildSummary.model_validate(json.loads(text))
    except (ValueError, ValidationError) as err:
        log.warning("unparseable build summary in %s: %s", where, err)
        return None
