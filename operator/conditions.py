"""Pure status arithmetic: conditions with stable transition times, phase, and transitions.

Kept apart from ``reconcile`` so the rules that users read in ``kubectl get/describe`` are
tested directly: a condition's ``lastTransitionTime`` moves only when its status changes, and
every change of a condition becomes exactly one Event.
"""

from __future__ import annotations

from dataclasses import dataclass

from optimodel.api.status import Condition, OptimizedModelStatus


@dataclass(frozen=True)
class Desired:
    """One condition as reconcile judged it this round."""

    type: str
    status: bool
    reason: str
    message: str


def merge_conditions(old: list[Condition], desired: list[Desired], now: str,
                     generation: int | None) -> list[Condition]:
    """New condition list; ``lastTransitionTime`` kept from ``old`` unless the status flipped."""
    previous = {c.type: c for c in old}
    out = []
    for d in desired:
        status = "True" if d.status else "False"
        prior = previous.get(d.type)
        since = prior.last_transition_time if prior and prior.status == status else now
        out.append(Condition(type=d.type, status=status, reason=d.reason, message=d.message,
                             last_transition_time=since, observed_generation=generation))
    return out


QUIET_REASONS = frozenset({"WaitingForEngine", "ReplicasNotReady"})
"""False conditions that are just "not yet": announced only when they follow a True."""

QUIET_UNLESS_RECOVERING = frozenset({"Reconciled"})
"""True conditions that are news only after a failure (a model's first reconcile is not)."""

WARNING_REASONS = frozenset({"ReconcileError", "BuildPending", "BuildRetrying", "AutoscalerNotInstalled"})
"""False conditions that need someone's attention even on the way up."""


def with_condition(conditions: list[Condition], desired: Desired, now: str,
                   generation: int | None) -> list[Condition]:
    """``conditions`` with one condition set (added or replaced); the others untouched."""
    (updated,) = merge_conditions(conditions, [desired], now, generation)
    out = [c for c in conditions if c.type != desired.type]
    return out + [updated]


def transitions(old: OptimizedModelStatus, new: OptimizedModelStatus) -> list[tuple[str, str, str]]:
    """(event type, reason, message) for each condition whose status or reason changed.

    A condition turning False after having been True is a Warning (e.g. replicas lost); so is
    any reason ending in ``Failed``. Waiting states on the way up are not announced.
    """
    previous = {c.type: (c.status, c.reason) for c in old.conditions}
    events = []
    for c in new.conditions:
        before = previous.get(c.type)
        if before == (c.status, c.reason):
            continue
        was_true = before is not None and before[0] == "True"
        if c.status == "False" and c.reason in QUIET_REASONS and not was_true:
            continue
        if c.status == "True" and c.reason in QUIET_UNLESS_RECOVERING and before is None:
            continue
        warning = c.status == "False" and (c.reason.endswith("Failed") or was_true
                                           or c.reason in WARNING_REASONS)
        events.append(("Warning" if warning else "Normal", c.reason, c.message or f"{c.type}={c.status}"))
    return events


def status_patch(old: dict, new: dict) -> dict | None:
    """Merge patch turning ``old`` status into ``new``; None when nothing changed.

    Keys present before and absent now are sent as null (merge-patch deletion), at any depth:
    a merge patch merges nested objects, so a nested key left out would be kept, not removed.
    """
    if old == new:
        return None
    return _with_deletions(old, new)


def _with_deletions(old: dict, new: dict) -> dict:
    patch = dict(new)
    for key, value in old.items():
        if key not in new:
            patch[key] = None
        elif isinstance(value, dict) and isinstance(new[key], dict):
            patch[key] = _with_deletions(value, new[key])
    return patch


def pod_problem(pods: list[dict]) -> str | None:
    """The first reason a serving pod is not ready, as a user should read it, or None.

    Looks at scheduling (e.g. an unbound PVC, no GPU node of the product), then at waiting
    containers (image pull errors, crash loops) and init containers (repository staging).
    """
    for pod in pods:
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return f"pod {name} unschedulable: {cond.get('message') or cond.get('reason')}"
        for key in ("initContainerStatuses", "containerStatuses"):
            for cs in status.get(key) or []:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                    detail = waiting.get("message") or ""
                    last = ((cs.get("lastState") or {}).get("terminated") or {}).get("message")
                    if last:  # a crash loop's why: the container's own last words
                        detail = f"{detail}; last exit: {last.strip()[-500:]}".lstrip("; ")
                    return f"pod {name} container {cs.get('name')}: {waiting['reason']} {detail}".strip()
    return None
