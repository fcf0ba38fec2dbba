"""The fault-injection infrastructure works against the real control plane.

``tests/support/faultproxy.py`` (a fault-injecting reverse proxy in front of kube-apiserver) must
forward faithfully when no fault is asked for, and inject exactly the faults asked for; and
``localcluster.restart`` must take a control-plane component down and bring it back with its
data. The fault tests of the operator build on both, so both are proven here first.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import localcluster  # hack/localcluster.py
import pytest
import urllib3
import yaml
from faultproxy import DEFAULT_ERROR_CODES, FaultProxy, proxied_kubeconfig
from kubernetes import client, config, watch
from polling import wait_for
from testcluster import start_control_plane

pytestmark = pytest.mark.cluster



@pytest.fixture
def proxy(cluster):
    with FaultProxy(cluster.kubeconfig, seed=1234) as p:
        yield p


@pytest.fixture
def proxied(cluster, proxy, tmp_path) -> str:
    return proxied_kubeconfig(cluster.kubeconfig, proxy.url, tmp_path / "proxied-kubeconfig")


def core(kubeconfig: str) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))


def token_of(kubeconfig: str) -> str:
    return yaml.safe_load(Path(kubeconfig).read_text())["users"][0]["user"]["token"]


def raw(proxy: FaultProxy, token: str, method: str, path: str, body: dict | None = None):
    """One request on a fresh connection, no client-side retries: (status, headers, body)."""
    url = urlparse(proxy.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        data = json.dumps(body).encode() if body is not None else None
        if data:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def configmap(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels},
            "data": {"k": "v"}}


# ------------------------------------------------------------------------------------------
# Pass-through
# ------------------------------------------------------------------------------------------


def test_proxy_forwards_reads_writes_and_live_watch_streams(cluster, namespace, proxy, proxied):
    api = core(proxied)
    assert api.read_namespace(namespace).metadata.name == namespace  # GET, bearer token passed on
    assert len(api.list_node(label_selector="type=kwok").items) == 6  # query string passed on
    api.create_namespaced_config_map(namespace, configmap("a", role="first"))  # POST with a body
    api.patch_namespaced_config_map("a", namespace, {"data": {"k": "patched"}})  # merge patch
    assert api.read_namespaced_config_map("a", namespace).data == {"k": "patched"}
    assert [c.metadata.name for c in api.list_namespaced_config_map(
        namespace, label_selector="role=first").items] == ["a"]
    # Errors pass through untouched: a real 404 Status and a real 409 Status.
    with pytest.raises(client.ApiException) as missing:
        api.read_namespaced_config_map("absent", namespace)
    assert missing.value.status == 404 and json.loads(missing.value.body)["reason"] == "NotFound"
    with pytest.raises(client.ApiException) as conflict:
        api.create_namespaced_config_map(namespace, configmap("a"))
    assert conflict.value.status == 409

    # A watch is a live stream: an object created after it started arrives at once, long before
    # the watch's own timeout (a buffering proxy would deliver it only when the stream ends).
    rv = api.list_namespaced_config_map(namespace).metadata.resource_version
    threading.Timer(0.5, lambda: core(cluster.kubeconfig).create_namespaced_config_map(
        namespace, configmap("b"))).start()
    t0, seen = time.monotonic(), None
    stream = watch.Watch()
    for event in stream.stream(api.list_namespaced_config_map, namespace, resource_version=rv,
                               timeout_seconds=30):
        if event["type"] == "ADDED" and event["object"].metadata.name == "b":
            seen = time.monotonic() - t0
            stream.stop()
    assert seen is not None and seen < 10, f"watch event after {seen}s"
    api.delete_namespaced_config_map("a", namespace)
    assert "a" not in [c.metadata.name for c in core(cluster.kubeconfig).list_namespaced_config_map(namespace).items]

    counts = proxy.counters
    assert counts["watches"] == 1 and counts["forwarded"] >= 10
    assert {k: v for k, v in counts.items() if k not in ("requests", "watches", "forwarded")} == \
        dict.fromkeys(["errors", "throttles", "resets", "lost_responses", "delays", "watch_drops",
                       "upstream_failures"], 0)
    assert all(outcome.startswith(("forwarded:", "watch:")) for *_, outcome in proxy.history)


def test_kopf_logs_in_and_watches_through_the_plain_http_proxy(cluster, namespace, proxy, proxied, tmp_path):
    """kopf's default login (the official client's kubeconfig) sends the bearer token to an
    ``http://`` server, and its watch-streams work through the proxy: a handler runs."""
    script = tmp_path / "op.py"
    script.write_text(
        "import kopf\n\n"
        "@kopf.on.startup()\n"
        "def configure(settings: kopf.OperatorSettings, **_):\n"
        "    settings.persistence.finalizer = 'faultproxy.test/kopf'\n"
        "    settings.posting.enabled = False\n\n"
        "@kopf.on.create('', 'v1', 'configmaps', labels={'kopf-test': 'yes'})\n"
        "def created(patch, **_):\n"
        "    patch.metadata.annotations['faultproxy.test/seen'] = 'yes'\n")
    log = tmp_path / "kopf.log"
    env = {**os.environ, "KUBECONFIG": proxied, "PYTHONSAFEPATH": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", namespace,
                                 str(script)], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        direct = core(cluster.kubeconfig)
        direct.create_namespaced_config_map(namespace, configmap("watched", **{"kopf-test": "yes"}))
        wait_for(lambda: (direct.read_namespaced_config_map("watched", namespace).metadata.annotations or {})
                 .get("faultproxy.test/seen"), timeout=30, what=f"kopf's handler; log:\n{log}")
    finally:
        proc.terminate()
        proc.wait(15)
    assert "login_via_client' succeeded" in log.read_text()
    assert proxy.counters["watches"] >= 1
    assert any(m == "PATCH" and o == "forwarded:200" for _, m, _, o in proxy.history)


# ------------------------------------------------------------------------------------------
# Injected faults
# ------------------------------------------------------------------------------------------


def test_error_rate_one_answers_every_request_with_a_5xx_status(cluster, namespace, proxy, proxied):
    api = core(proxied)
    proxy.error_rate = 1.0
    calls = [
        lambda: api.read_namespace(namespace),
        lambda: api.list_namespaced_config_map(namespace),
        lambda: api.create_namespaced_config_map(namespace, configmap("never")),
        lambda: api.patch_namespace(namespace, {"metadata": {"labels": {"x": "y"}}}),
        lambda: api.delete_namespace(namespace),
    ] * 4
    codes = []
    for call in calls:
        with pytest.raises(client.ApiException) as err:
            call()
        body = json.loads(err.value.body)
        assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == err.value.status
        codes.append(err.value.status)
    assert set(codes) <= set(DEFAULT_ERROR_CODES) and len(set(codes)) > 1, codes
    assert proxy.counters["errors"] == len(calls) and proxy.counters["forwarded"] == 0

    with proxy.faults(error_rate=1.0, error_codes=(503,)):
        with pytest.raises(client.ApiException) as err:
            api.read_namespace(namespace)
        assert err.value.status == 503
    assert proxy.error_codes == DEFAULT_ERROR_CODES  # put back by the context manager
    proxy.clear_faults()
    # Nothing reached the API server while every request failed.
    with pytest.raises(client.ApiException) as err:
        api.read_namespaced_config_map("never", namespace)
    assert err.value.status == 404
    assert "x" not in (api.read_namespace(namespace).metadata.labels or {})


def test_throttle_rate_one_answers_429_with_retry_after(cluster, namespace, proxy, proxied):
    token = token_of(proxied)
    proxy.throttle_rate = 1.0
    for method, path, body in [("GET", f"/api/v1/namespaces/{namespace}", None),
                               ("POST", f"/api/v1/namespaces/{namespace}/configmaps", configmap("never"))]:
        status, headers, payload = raw(proxy, token, method, path, body)
        status_obj = json.loads(payload)
        assert (status, headers["Retry-After"]) == (429, "1")
        assert status_obj["reason"] == "TooManyRequests" and status_obj["details"]["retryAfterSeconds"] == 1
    assert proxy.counters["throttles"] == 2

    # The official client (urllib3) honours Retry-After on 429 by itself: a few retries, a
    # second apart, before the caller sees the 429.
    t0 = time.monotonic()
    with pytest.raises(client.ApiException) as err:
        core(proxied).read_namespace(namespace)
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "1"
    assert proxy.counters["throttles"] >= 3 and time.monotonic() - t0 >= 1.5
    # error_rate is tried first: with both at 1.0, 5xx.
    proxy.error_rate = 1.0
    assert raw(proxy, token, "GET", "/api")[0] in DEFAULT_ERROR_CODES


def test_reset_rate_closes_the_connection_without_a_response(cluster, namespace, proxy, proxied):
    token = token_of(proxied)
    proxy.reset_rate = 1.0
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        raw(proxy, token, "POST", f"/api/v1/namespaces/{namespace}/configmaps", configmap("never"))
    assert proxy.counters["resets"] == 1
    with pytest.raises(urllib3.exceptions.MaxRetryError):  # the client's own retries all reset too
        core(proxied).read_namespace(namespace, _request_timeout=5)
    proxy.reset_rate = 0.0
    assert raw(proxy, token, "GET", f"/api/v1/namespaces/{namespace}/configmaps/never")[0] == 404


def test_lost_response_applies_the_request_but_answers_504(cluster, namespace, proxy, proxied):
    api = core(proxied)
    with proxy.faults(lost_response_rate=1.0):
        with pytest.raises(client.ApiException) as err:
            api.create_namespaced_config_map(namespace, configmap("applied"))
    assert err.value.status == 504
    assert api.read_namespaced_config_map("applied", namespace).data == {"k": "v"}
    assert proxy.counters["lost_responses"] == 1


def test_latency_and_fault_filter(cluster, namespace, proxy, proxied):
    api = core(proxied)
    proxy.latency = 0.3
    t0 = time.monotonic()
    for _ in range(5):
        api.read_namespace(namespace)
    assert proxy.counters["delays"] == 5 and time.monotonic() - t0 > 0.2
    # Faults only where the filter says: writes fail, reads pass (and are not delayed).
    proxy.configure(latency=0.0, error_rate=1.0, fault_filter=lambda method, path: method != "GET")
    api.read_namespace(namespace)
    with pytest.raises(client.ApiException):
        api.create_namespaced_config_map(namespace, configmap("never"))
    assert proxy.counters["errors"] == 1


def test_drop_watch_after_cuts_watch_streams_mid_stream(cluster, namespace, proxy, proxied):
    api = core(proxied)
    proxy.drop_watch_after = 1.0
    for _ in range(3):
        t0 = time.monotonic()
        with pytest.raises(urllib3.exceptions.ProtocolError):  # no terminating chunk: not a clean end
            for _event in watch.Watch().stream(api.list_namespaced_config_map, namespace, timeout_seconds=30):
                pass
        assert time.monotonic() - t0 < 3
    assert proxy.counters["watch_drops"] == 3
    api.list_namespaced_config_map(namespace)  # other requests are not affected

    # drop_watches(): cut the open watches now, whatever drop_watch_after says.
    proxy.drop_watch_after = None
    outcome: list = []

    def watch_until_cut() -> None:
        try:
            for _event in watch.Watch().stream(api.list_namespaced_config_map, namespace, timeout_seconds=30):
                pass
            outcome.append("ended")
        except urllib3.exceptions.ProtocolError:
            outcome.append("cut")

    watcher = threading.Thread(target=watch_until_cut)
    watcher.start()
    wait_for(lambda: proxy.counters["watches"] == 4, what="the watch to start")
    time.sleep(0.5)
    proxy.drop_watches()
    watcher.join(10)
    assert outcome == ["cut"] and proxy.counters["watch_drops"] == 4


def test_knobs_are_validated(cluster):
    with FaultProxy(cluster.kubeconfig) as p:
        with pytest.raises(ValueError):
            p.error_rate = 1.5
        with pytest.raises(TypeError):
            p.configure(no_such_knob=1)
        assert p.error_rate == 0.0 and p.url.startswith("http://127.0.0.1:")
        url = p.url
    p.start()  # a restarted proxy keeps its URL
    try:
        assert p.url == url
        assert raw(p, token_of(cluster.kubeconfig), "GET", "/readyz")[0] == 200
    finally:
        p.stop()


# ------------------------------------------------------------------------------------------
# Component restarts (a dedicated cluster: the session's must not lose its API server)
# ------------------------------------------------------------------------------------------


def test_cluster_state_without_commands_still_loads(tmp_path):
    (tmp_path / "cluster.json").write_text(json.dumps({
        "state_dir": str(tmp_path), "kubeconfig": "k", "server": "https://127.0.0.1:1", "token": "t",
        "pids": {"etcd": 1}, "ready_seconds": 1.0, "real_node": False, "images": {}}))
    state = localcluster.ClusterState.load(tmp_path)
    assert state.commands == {} and state.log_files == {} and state.pids == {"etcd": 1}
    with pytest.raises(KeyError, match="no saved command"):
        localcluster.restart(tmp_path, "etcd")


@pytest.fixture
def own_cluster():
    _, state_dir, state = start_control_plane("optimodel-restart-")
    try:
        yield state
    finally:
        localcluster.down(state_dir)


def _answers(state) -> int | str:
    try:
        return localcluster.ApiClient(state.server, state.token).request("GET", "/readyz")[0]
    except OSError as err:  # urllib's URLError included
        return type(err).__name__


def _alive(pid: int) -> bool:
    import realnode  # hack/realnode.py

    return realnode.process_alive(pid)


def test_restart_apiserver_and_etcd_keeps_objects(own_cluster, tmp_path):
    state = own_cluster
    state_dir = Path(state.state_dir)
    assert set(state.commands) == set(state.pids) and all(Path(p).is_file() for p in state.log_files.values())
    direct = core(state.kubeconfig)
    ns = f"r-{uuid.uuid4().hex[:6]}"
    direct.create_namespace({"metadata": {"name": ns}})
    direct.create_namespaced_config_map(ns, configmap("before"))

    with FaultProxy(state.kubeconfig) as proxy:
        via_proxy = core(proxied_kubeconfig(state.kubeconfig, proxy.url, tmp_path / "kc"))
        assert via_proxy.read_namespaced_config_map("before", ns).data == {"k": "v"}

        # kube-apiserver, through restart(): unavailable while down, then it answers again.
        old_pid, seen = state.pids["kube-apiserver"], []
        restarter = threading.Thread(target=lambda: seen.append(
            localcluster.restart(state_dir, "kube-apiserver", down_seconds=2)))
        restarter.start()
        wait_for(lambda: _answers(state) != 200, timeout=10, what="kube-apiserver to go down")
        with pytest.raises(urllib3.exceptions.MaxRetryError):  # the proxy: no answer, like the server
            via_proxy.read_namespaced_config_map("before", ns, _request_timeout=3)
        assert proxy.counters["upstream_failures"] >= 1
        restarter.join(120)
        (restarted,) = seen
        assert _answers(state) == 200 and not _alive(old_pid)
        assert restarted.pids["kube-apiserver"] != old_pid
        assert localcluster.ClusterState.load(state_dir).pids["kube-apiserver"] == restarted.pids["kube-apiserver"]
        assert direct.read_namespaced_config_map("before", ns).data == {"k": "v"}
        assert via_proxy.read_namespaced_config_map("before", ns).data == {"k": "v"}  # pooled conns recover
        assert "restarted by localcluster" in Path(state.log_files["kube-apiserver"]).read_text()

    # etcd, stopped and started by hand: the API server cannot serve without it, and everything
    # written before is still there afterwards (the data directory is kept).
    direct.create_namespaced_config_map(ns, configmap("before-etcd"))
    localcluster.stop_component(state_dir, "etcd")
    wait_for(lambda: _answers(state) != 200, timeout=20, interval=0.5, what="/readyz to fail without etcd")
    after = localcluster.start_component(state_dir, "etcd")
    assert _answers(state) == 200
    assert {c.metadata.name for c in direct.list_namespaced_config_map(ns).items} >= {"before", "before-etcd"}
    direct.create_namespaced_config_map(ns, configmap("after-etcd"))  # writable again

    # restart() of etcd in one call, then down() stops every process, restarted ones included.
    final = localcluster.restart(state_dir, "etcd", down_seconds=0.5)
    assert final.pids["etcd"] != after.pids["etcd"]
    assert direct.read_namespaced_config_map("after-etcd", ns).data == {"k": "v"}
    old_scheduler = final.pids["kube-scheduler"]
    final = localcluster.restart(state_dir, "kube-scheduler")  # any component: up again in 0.5 s
    assert final.pids["kube-scheduler"] != old_scheduler and _alive(final.pids["kube-scheduler"])
    pids = dict(final.pids)
    localcluster.down(state_dir)
    assert [name for name, pid in pids.items() if _alive(pid)] == []


def test_proxied_kubeconfig_needs_a_token_user(tmp_path):
    source = tmp_path / "certs.json"
    source.write_text(json.dumps({
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443", "certificate-authority": "/ca"}}],
        "users": [{"name": "u", "user": {"client-certificate": "/crt", "client-key": "/key"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}], "current-context": "x"}))
    with pytest.raises(ValueError, match="bearer token"):
        proxied_kubeconfig(source, "http://127.0.0.1:1", tmp_path / "out")
