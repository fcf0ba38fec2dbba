"""A fault-injecting reverse proxy between a Kubernetes client and the real kube-apiserver.

Why a proxy rather than mocks: the operator under test runs unchanged (its own process, the
official client and kopf's aiohttp session) against the real control plane; only the network
between them misbehaves, the way a loaded API server, a flaky load balancer or a restarting
control plane misbehave in production.

The proxy listens on plain HTTP on 127.0.0.1 and forwards every request (method, path, raw query,
headers including ``Authorization``, body) to the API server's HTTPS URL, verifying it with the
cluster CA. Responses are streamed chunk by chunk, so watches (``?watch=true``) stay live streams.
Both clients send a kubeconfig's bearer token over ``http://`` unchanged (the official client
adds ``Authorization`` whatever the scheme; kopf puts it in its aiohttp session's headers), so
``proxied_kubeconfig`` writes a plain-http kubeconfig that keeps the user's token.

Faults, all changeable at runtime from any thread (plain attribute assignment, ``configure`` or
the ``faults(...)`` context manager), drawn from one seeded ``random.Random``:

- ``reset_rate``: fraction of non-watch requests whose connection is closed (TCP reset) without
  any response; the request never reaches the API server.
- ``error_rate``: fraction answered with a 5xx (random choice of ``error_codes``, by default
  500, 502, 503, 504) and a Kubernetes ``Status`` body; never reaches the API server.
- ``throttle_rate``: fraction answered 429 with ``Retry-After`` (``retry_after`` seconds, 1 by
  default) and a ``Status`` body; never reaches the API server.
- ``lost_response_rate``: fraction forwarded to the API server (so the change *is* applied)
  whose real response is replaced by a 504 ``Status``: the client cannot tell whether it worked.
- ``latency``: each request (watches included) waits ``uniform(0, latency)`` seconds before it
  is forwarded.
- ``drop_watch_after``: each watch stream is cut abruptly (connection closed, no terminating
  chunk) after ``uniform(0, drop_watch_after)`` seconds; ``None`` disables. ``drop_watches()``
  cuts every open watch now.

The rate knobs are tried in that order (reset, error, throttle, lost response), each with its
own draw, so with ``error_rate=1.0`` every non-watch request gets a 5xx whatever
``throttle_rate`` says. With a ``seed`` the draws are reproducible for a client that sends its
requests one at a time (concurrent requests draw in arrival order). ``fault_filter(method, path_with_query) -> bool`` restricts every fault to
the requests it accepts (the others pass untouched). When the API server itself is unreachable
(a restart), the proxy closes the client's connection without a response, as a dead server
would, and counts an ``upstream_failures``.

    with FaultProxy(cluster.kubeconfig, seed=1) as proxy:
        kubeconfig = proxied_kubeconfig(cluster.kubeconfig, proxy.url, tmp_path / "kc")
        proxy.error_rate = 0.3
        ...
        assert proxy.counters["errors"] > 0

Not supported: protocol upgrades (``kubectl exec``/``port-forward``, SPDY/WebSocket).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

DEFAULT_ERROR_CODES = (500, 502, 503, 504)
COUNTER_NAMES = ("requests", "watches", "forwarded", "errors", "throttles", "resets", "lost_responses",
                 "delays", "watch_drops", "upstream_failures")
_KNOBS = ("error_rate", "throttle_rate", "reset_rate", "lost_response_rate", "latency",
          "drop_watch_after", "error_codes", "retry_after", "fault_filter")
_RATES = ("error_rate", "throttle_rate", "reset_rate", "lost_response_rate")
# RFC 9110 7.6.1 hop-by-hop headers, plus those the proxy recomputes itself.
_HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
    "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length"))
_REASONS = {500: "InternalError", 502: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
            429: "TooManyRequests"}


def is_watch(method: str, path: str, query: dict[str, str] | Any) -> bool:
    """A watch request: ``?watch=true`` (any Go ``ParseBool`` truth) or a legacy ``/watch/`` path."""
    if method != "GET":
        return False
    value = str(query.get("watch", "")).lower()
    return value in ("1", "t", "true") or "/watch/" in path


def status_body(code: int, message: str, retry_after: int | None = None) -> dict:
    """A ``metav1.Status`` as the API server sends it for a failed request."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": _REASONS.get(code, "InternalError"), "code": code}
    if retry_after is not None:
        body["details"] = {"retryAfterSeconds": retry_after}
    return body


def _current_cluster(config: dict) -> dict:
    contexts = {c["name"]: c.get("context") or {} for c in config.get("contexts") or []}
    clusters = {c["name"]: c.get("cluster") or {} for c in config.get("clusters") or []}
    current = config.get("current-context")
    if current in contexts and contexts[current].get("cluster") in clusters:
        return clusters[contexts[current]["cluster"]]
    if len(clusters) == 1:
        return next(iter(clusters.values()))
    raise ValueError("kubeconfig has no current context naming a cluster")


def upstream_from_kubeconfig(kubeconfig: str | Path) -> tuple[str, ssl.SSLContext]:
    """The current cluster's server URL and an SSL context that verifies it (CA file or data)."""
    path = Path(kubeconfig)
    cluster = _current_cluster(yaml.safe_load(path.read_text()))
    server = cluster["server"].rstrip("/")
    ctx = ssl.create_default_context()
    if cluster.get("certificate-authority-data"):
        ctx.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    elif cluster.get("certificate-authority"):
        ca = Path(cluster["certificate-authority"])
        ctx.load_verify_locations(cafile=str(ca if ca.is_absolute() else path.parent / ca))
    if cluster.get("insecure-skip-tls-verify"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return server, ctx


def proxied_kubeconfig(kubeconfig_path: str | Path, proxy_url: str, out_path: str | Path) -> str:
    """Write a copy of ``kubeconfig_path`` whose current cluster's server is ``proxy_url`` (plain
    http: no CA), keeping users (the bearer token), contexts and the current context. Returns
    ``str(out_path)``. The proxy terminates TLS, so only token users can go through it: a user
    authenticating with a client certificate raises ValueError."""
    config = yaml.safe_load(Path(kubeconfig_path).read_text())
    contexts = {c["name"]: c.get("context") or {} for c in config.get("contexts") or []}
    context = contexts.get(config.get("current-context")) or (
        next(iter(contexts.values())) if len(contexts) == 1 else {})
    users = {u["name"]: u.get("user") or {} for u in config.get("users") or []}
    user = users.get(context.get("user"), {})
    if not (user.get("token") or user.get("tokenFile")):
        raise ValueError("the proxy can only carry bearer tokens: the kubeconfig's user has none "
                         "(see tests/support/chart.py token_kubeconfig)")
    cluster = _current_cluster(config)
    for key in ("certificate-authority", "certificate-authority-data", "insecure-skip-tls-verify",
                "tls-server-name", "proxy-url"):
        cluster.pop(key, None)
    cluster["server"] = proxy_url
    Path(out_path).write_text(json.dumps(config, indent=2))  # JSON is YAML: every client reads it
    return str(out_path)


class FaultProxy:
    """See the module docstring. Thread-safe; start()/stop() or use as a context manager."""

    def __init__(self, kubeconfig: str | Path | None = None, *, upstream: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, seed: int | None = None,
                 error_rate: float = 0.0, throttle_rate: float = 0.0, reset_rate: float = 0.0,
                 lost_response_rate: float = 0.0, latency: float = 0.0,
                 drop_watch_after: float | None = None,
                 error_codes: tuple[int, ...] = DEFAULT_ERROR_CODES, retry_after: int = 1,
                 fault_filter: Callable[[str, str], bool] | None = None,
                 host: str = "127.0.0.1", port: int = 0, history: int = 10_000):
        if kubeconfig is not None:
            server, ctx = upstream_from_kubeconfig(kubeconfig)
            upstream, ssl_context = upstream or server, ssl_context or ctx
        if not upstream:
            raise ValueError("FaultProxy needs a kubeconfig or an upstream URL")
        self.upstream = upstream.rstrip("/")
        self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        self.seed = seed
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self._knobs: dict[str, Any] = {}
        self.configure(error_rate=error_rate, throttle_rate=throttle_rate, reset_rate=reset_rate,
                       lost_response_rate=lost_response_rate, latency=latency,
                       drop_watch_after=drop_watch_after, error_codes=error_codes,
                       retry_after=retry_after, fault_filter=fault_filter)
        self._counters = dict.fromkeys(COUNTER_NAMES, 0)
        self._history: collections.deque = collections.deque(maxlen=history)
        self._host, self._port = host, port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._watch_cuts: set[asyncio.Event] = set()
        self._stopped: asyncio.Event | None = None

    # ---------------------------------------------------------------- knobs (any thread)

    def configure(self, **knobs: Any) -> None:
        """Set several knobs at once (atomically, as seen by requests). Unknown names raise."""
        for name, value in knobs.items():
            if name not in _KNOBS:
                raise TypeError(f"unknown FaultProxy knob {name!r}; knobs: {', '.join(_KNOBS)}")
            if name in _RATES and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value!r}")
            if name == "latency" and float(value) < 0:
                raise ValueError(f"latency must be >= 0, got {value!r}")
            if name == "drop_watch_after" and value is not None and float(value) < 0:
                raise ValueError(f"drop_watch_after must be None or >= 0, got {value!r}")
            if name == "error_codes" and (not value or any(not 500 <= int(c) <= 599 for c in value)):
                raise ValueError(f"error_codes must be non-empty 5xx codes, got {value!r}")
        with self._lock:
            for name, value in knobs.items():
                if name in _RATES or name == "latency":
                    value = float(value)
                elif name == "drop_watch_after" and value is not None:
                    value = float(value)
                elif name == "error_codes":
                    value = tuple(int(c) for c in value)
                elif name == "retry_after":
                    value = int(value)
                self._knobs[name] = value

    def clear_faults(self) -> None:
        """No faults from now on (counters kept)."""
        self.configure(error_rate=0.0, throttle_rate=0.0, reset_rate=0.0, lost_response_rate=0.0,
                       latency=0.0, drop_watch_after=None, fault_filter=None)

    @contextlib.contextmanager
    def faults(self, **knobs: Any) -> Iterator["FaultProxy"]:
        """Set knobs for a ``with`` block, then put the previous values back."""
        with self._lock:
            previous = {name: self._knobs[name] for name in knobs if name in self._knobs}
        self.configure(**knobs)
        try:
            yield self
        finally:
            self.configure(**previous)

    def __getattr__(self, name: str) -> Any:
        if name in _KNOBS:
            with self.__dict__["_lock"]:
                return self.__dict__["_knobs"][name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _KNOBS:
            self.configure(**{name: value})
        else:
            super().__setattr__(name, value)

    # ---------------------------------------------------------------- observations

    @property
    def counters(self) -> dict[str, int]:
        """A snapshot: requests, watches, forwarded, errors, throttles, resets, lost_responses,
        delays, watch_drops, upstream_failures."""
        with self._lock:
            return dict(self._counters)

    def reset_counters(self) -> None:
        with self._lock:
            self._counters = dict.fromkeys(COUNTER_NAMES, 0)
            self._history.clear()

    @property
    def history(self) -> list[tuple[float, str, str, str]]:
        """(time.monotonic(), method, path with query, outcome) of the latest finished requests
        (``history`` of them, oldest first), recorded when the proxy is done with a request.
        Outcomes: ``forwarded:<status>``, ``watch:<status>`` (a watch stream the API server
        ended), either with ``:client_gone`` appended when the client left mid-body,
        ``error:<code>``, ``throttle``, ``reset``, ``lost_response:<real status>``, ``watch_drop``,
        ``upstream_failure``. A request whose client disconnected while the proxy waited on the
        API server is not recorded."""
        with self._lock:
            return list(self._history)

    def _count(self, counter: str | None, method: str, path: str, outcome: str) -> None:
        with self._lock:
            if counter:
                self._counters[counter] += 1
            self._history.append((time.monotonic(), method, path, outcome))

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        if self._thread is None:
            raise RuntimeError("FaultProxy is not started")
        return f"http://{self._host}:{self._port}"

    def start(self) -> "FaultProxy":
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        self._port = sock.getsockname()[1]  # kept: a restarted proxy serves the same URL
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(sock, ready))
            except BaseException as err:  # noqa: BLE001 - reported to start()
                failure.append(err)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"faultproxy:{self._port}", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure or not ready.is_set():
            self._thread = None
            raise RuntimeError(f"fault proxy failed to start: {failure[0] if failure else 'timeout'}")
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if self._stopped is not None:
            loop.call_soon_threadsafe(self._stopped.set)
        thread.join(30)
        self._thread = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def drop_watches(self) -> None:
        """Cut every open watch stream now (counted as watch_drops)."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(lambda: [cut.set() for cut in list(self._watch_cuts)])

    # ---------------------------------------------------------------- the loop thread

    async def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,  # bytes pass through; Content-Encoding stays as sent
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        # handler_cancellation: a client that goes away ends its upstream request too.
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=2.0)
        try:
            await self._runner.setup()
            await web.SockSite(self._runner, sock).start()
            ready.set()
            await self._stopped.wait()
            for cut in list(self._watch_cuts):
                cut.set()
            await asyncio.sleep(0)
        finally:
            await self._runner.cleanup()
            await self._session.close()
            sock.close()

    def _draw(self, method: str, path: str, watch: bool) -> tuple[str | None, float, float | None, dict]:
        """Decide this request's fate under the lock: (fault, delay, watch cut-after, knobs)."""
        with self._lock:
            knobs = dict(self._knobs)
            eligible = knobs["fault_filter"] is None or knobs["fault_filter"](method, path)
            if not eligible:
                return None, 0.0, None, knobs
            rng = self._rng
            delay = rng.uniform(0, knobs["latency"]) if knobs["latency"] > 0 else 0.0
            fault = None
            if watch:
                after = knobs["drop_watch_after"]
                cut = rng.uniform(0, after) if after is not None else None
                return None, delay, cut, knobs
            if knobs["reset_rate"] and rng.random() < knobs["reset_rate"]:
                fault = "reset"
            elif knobs["error_rate"] and rng.random() < knobs["error_rate"]:
                fault = f"error:{rng.choice(knobs['error_codes'])}"
            elif knobs["throttle_rate"] and rng.random() < knobs["throttle_rate"]:
                fault = "throttle"
            elif knobs["lost_response_rate"] and rng.random() < knobs["lost_response_rate"]:
                fault = "lost_response"
            return fault, delay, None, knobs

    @staticmethod
    def _abort(request: web.BaseRequest, hard: bool) -> None:
        """Close the client's connection now; ``hard``: a TCP reset (SO_LINGER 0) rather than FIN."""
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if hard and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        method, path = request.method, request.path_qs
        watch = is_watch(method, request.path, request.query)
        with self._lock:
            self._counters["requests"] += 1
            if watch:
                self._counters["watches"] += 1
        fault, delay, cut_after, knobs = self._draw(method, path, watch)
        body = await request.read() if request.body_exists else b""
        if delay > 0:
            with self._lock:
                self._counters["delays"] += 1
            await asyncio.sleep(delay)

        if fault == "reset":
            self._count("resets", method, path, "reset")
            self._abort(request, hard=True)
            return web.Response()  # never written: the transport is gone
        if fault and fault.startswith("error:"):
            code = int(fault.split(":")[1])
            self._count("errors", method, path, fault)
            return web.json_response(status_body(code, f"fault injected by faultproxy: HTTP {code}"),
                                     status=code)
        if fault == "throttle":
            self._count("throttles", method, path, "throttle")
            seconds = knobs["retry_after"]
            return web.json_response(
                status_body(429, "fault injected by faultproxy: too many requests, please try again later",
                            retry_after=seconds),
                status=429, headers={"Retry-After": str(seconds)})

        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP)
        target = URL(self.upstream + request.raw_path, encoded=True)
        assert self._session is not None
        upstream = None
        for attempt in (1, 2):
            try:
                upstream = await self._session.request(method, target, headers=headers, data=body or None,
                                                       allow_redirects=False)
                break
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as err:
                # A pooled keep-alive connection the API server closed (it restarted): one fresh try.
                if attempt == 2 or isinstance(err, aiohttp.ClientConnectorError):
                    upstream = None
                    break
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                break
        if upstream is None:
            self._count("upstream_failures", method, path, "upstream_failure")
            self._abort(request, hard=False)  # like a dead API server: no response at all
            return web.Response()

        try:
            if fault == "lost_response":
                try:
                    await upstream.read()
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    pass  # lost either way
                self._count("lost_responses", method, path, f"lost_response:{upstream.status}")
                return web.json_response(
                    status_body(504, "fault injected by faultproxy: the request was applied but its "
                                     "response was lost"), status=504)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers.add(key, value)
            if not watch and upstream.content_length is not None:
                response.content_length = upstream.content_length
            try:
                await response.prepare(request)
            except ConnectionError:  # the client went away
                return response
            if watch and upstream.status == 200:
                return await self._stream_watch(request, response, upstream, method, path, cut_after)
            outcome = await self._copy(upstream, response)
            return self._finish(request, response, outcome, method, path, f"forwarded:{upstream.status}")
        finally:
            upstream.release()

    @staticmethod
    async def _copy(upstream: aiohttp.ClientResponse, response: web.StreamResponse) -> str:
        """Copy the body chunk by chunk as it arrives: "eof", "client_gone" or "upstream_failed"."""
        while True:
            try:
                chunk = await upstream.content.readany()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                return "upstream_failed"
            if not chunk:
                try:
                    await response.write_eof()
                except (ConnectionError, aiohttp.ClientError):
                    return "client_gone"
                return "eof"
            try:
                await response.write(chunk)
            except (ConnectionError, aiohttp.ClientError):
                return "client_gone"

    def _finish(self, request: web.BaseRequest, response: web.StreamResponse, outcome: str,
                method: str, path: str, done: str) -> web.StreamResponse:
        if outcome == "upstream_failed":  # the API server went away mid-body: so does the client's
            self._count("upstream_failures", method, path, "upstream_failure")
            self._abort(request, hard=False)
        else:
            self._count("forwarded", method, path, done if outcome == "eof" else f"{done}:client_gone")
        return response

    async def _stream_watch(self, request: web.BaseRequest, response: web.StreamResponse,
                            upstream: aiohttp.ClientResponse, method: str, path: str,
                            cut_after: float | None) -> web.StreamResponse:
        cut = asyncio.Event()
        self._watch_cuts.add(cut)
        pumping = asyncio.ensure_future(self._copy(upstream, response))
        cutting = asyncio.ensure_future(cut.wait())
        try:
            done, _ = await asyncio.wait({pumping, cutting}, timeout=cut_after,
                                         return_when=asyncio.FIRST_COMPLETED)
            if pumping in done:
                return self._finish(request, response, pumping.result(), method, path,
                                    f"watch:{upstream.status}")
            # Deadline or drop_watches(): cut mid-stream, no terminating chunk.
            self._count("watch_drops", method, path, "watch_drop")
            self._abort(request, hard=False)
            return response
        finally:
            self._watch_cuts.discard(cut)
            for task in (pumping, cutting):
                task.cancel()
            await asyncio.gather(pumping, cutting, return_exceptions=True)
