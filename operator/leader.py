"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's ``leaderelection``.

Why a Lease and not kopf peering: kopf's peering pauses lower-priority operators when it sees a
higher-priority peer; it is not mutual exclusion (two equal replicas both act), and it needs a
cluster-wide peering CRD and RBAC. A Lease is the Kubernetes standard (controller-manager and
scheduler use it), needs only get/create/update on one Lease in the operator's namespace, and
gives a bounded failover: a dead leader is replaced ``lease_duration_seconds`` after its last
renewal.

Safety: the leader stops acting (``on_stop``, which exits the process) if it cannot renew within
``renew_deadline_seconds``, which is shorter than the lease duration, so by the time another
replica may take the Lease the old leader has stopped.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from kubernetes import client

from optimodel.operator.kube import Kube, describe
from optimodel.operator.settings import OperatorSettings

log = logging.getLogger("optimodel.leader")

LEASE_API = "coordination.k8s.io/v1"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _format(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


class LeaderElector:
    """Acquire and keep renewing one Lease; call ``on_start`` once leading, ``on_stop`` when lost."""

    def __init__(self, kube: Kube, settings: OperatorSettings, identity: str,
                 on_start: Callable[[], None], on_stop: Callable[[], None]):
        if not settings.leader_election_namespace:
            raise ValueError("leader election needs OPTIMODEL_LEADER_ELECTION_NAMESPACE")
        self.kube, self.settings, self.identity = kube, settings, identity
        self.namespace, self.name = settings.leader_election_namespace, settings.leader_election_lease_name
        self.on_start, self.on_stop = on_start, on_stop
        self.leading = threading.Event()
        # client-go's rule: a Lease is expired when *we* have seen no change of its record for
        # the lease duration (our monotonic clock), so clock skew between nodes cannot matter.
        self._observed: tuple | None = None
        self._observed_at = 0.0
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        retry = self.settings.lease_retry_seconds
        while not self.leading.is_set():
            if self._try_acquire_or_renew():
                self.leading.set()
                log.info("%s leads (Lease %s/%s)", self.identity, self.namespace, self.name)
                self.on_start()
                break
            time.sleep(retry)
        last_renewal = time.monotonic()
        while True:
            time.sleep(retry)
            if self._try_acquire_or_renew():
                last_renewal = time.monotonic()
            elif time.monotonic() - last_renewal > self.settings.renew_deadline_seconds:
                log.error("%s lost the Lease %s/%s (no renewal for %.0fs): stopping",
                          self.identity, self.namespace, self.name, self.settings.renew_deadline_seconds)
                self.leading.clear()
                self.on_stop()
                return

    def _try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the Lease afterwards."""
        try:
            lease = self.kube.get(LEASE_API, "Lease", self.namespace, self.name)
            at = _now()
            if lease is None:
                created = self.kube.create(self._lease(None, at, transitions=0, acquired=at))
                return created is not None
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity")
            record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
            if record != self._observed:
                self._observed, self._observed_at = record, time.monotonic()
            duration = float(spec.get("leaseDurationSeconds") or self.settings.lease_duration_seconds)
            if holder and holder != self.identity and time.monotonic() - self._observed_at <= duration:
                return False
            ours = holder == self.identity
            acquired = _parse(spec.get("acquireTime")) if ours else at
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
            self.kube.replace(self._lease(lease["metadata"]["resourceVersion"], at, transitions,
                                          acquired or at))
            return True
        except client.ApiException as err:
            if err.status != 409:  # 409: someone else wrote first; they lead
                log.warning("leader election: %s", describe(err))
            return False
        except Exception as err:  # noqa: BLE001 - the API being down is an ordinary failed try
            log.warning("leader election: %s", describe(err))
            return False

    def _lease(self, resource_version: str | None, at: dt.datetime, transitions: int,
               acquired: dt.datetime) -> dict:
        meta = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {
            "apiVersion": LEASE_API,
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.settings.lease_duration_seconds),
                "acquireTime": _format(acquired),
                "renewTime": _format(at),
                "leaseTransitions": transitions,
            },
        }
