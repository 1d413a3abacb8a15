"""The operator listener ([metrics] listen): `/metrics`, the dashboard at `/`, and the JSON
the dashboard reads at `/api/state`. Read-only: GET and HEAD only.

It runs in threads of the supervisor (see `supervisor.observer` for why the supervisor).
Bad requests (another method, an unknown path, a malformed request line) get a short plain
refusal and are counted in `akita_http_bad_requests_total{reason}`; at most
`MAX_CONNECTIONS` requests are served at once and each connection has a read timeout, so a
slow or flooding client cannot pile up threads.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from supervisor import metrics
from supervisor.observed import Observations
from supervisor.observer import Observer
from supervisor.pages import state_document

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 16
READ_TIMEOUT_S = 10.0
ROUTES = ("/", "/metrics", "/api/state")


class OperatorServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], observations: Observations) -> None:
        if ipaddress.ip_address(address[0]).version == 6:
            self.address_family = socket.AF_INET6
        self.observations = observations
        self.registry = metrics.registry_for(observations)
        self.dashboard = resources.files("supervisor").joinpath("dashboard.html").read_bytes()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.observations.count_bad_request("busy")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class Handler(BaseHTTPRequestHandler):
    server: OperatorServer
    timeout = READ_TIMEOUT_S
    server_version = "akita"
    # A refusal of a malformed request line still gets a status line and headers (with
    # http.server's default, HTTP/0.9, it would be a bare body).
    default_request_version = "HTTP/1.0"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, CONTENT_TYPE_LATEST, metrics.render(self.server.registry), body)
        elif path == "/":
            self._reply(200, "text/html; charset=utf-8", self.server.dashboard, body)
        elif path == "/api/state":
            document = state_document(self.server.observations)
            self._reply(200, "application/json", json.dumps(document).encode(), body)
        else:
            self.server.observations.count_bad_request("unknown_path")
            self._refuse(404, f"no page at {path[:100]!r}; pages: {', '.join(ROUTES)}\n")

    def __getattr__(self, name: str) -> Any:
        # Any other method (POST, PUT, DELETE, ...): http.server looks up do_<METHOD>.
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def _method_not_allowed(self) -> None:
        self.server.observations.count_bad_request("method")
        self._refuse(405, f"{str(self.command)[:20]} is not allowed: these pages are read-only "
                          "(GET or HEAD)\n", allow="GET, HEAD")

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        # Malformed request lines, over-long headers and the like, from http.server itself.
        self.server.observations.count_bad_request("malformed")
        self._refuse(code, f"bad request: {message or code}\n")

    def _refuse(self, code: int, text: str, allow: str | None = None) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if allow:
            self.send_header("Allow", allow)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(data)

    def _reply(self, code: int, content_type: str, data: bytes, body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class OperatorPages:
    """The observer and the listener, started and stopped together by the supervisor."""

    def __init__(self, observer: Observer, server: OperatorServer) -> None:
        self.observer = observer
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, name="operator-http",
                                        kwargs={"poll_interval": 0.5}, daemon=True)

    @classmethod
    def start(cls, config: Any, snapshot: Any) -> OperatorPages | None:
        """Start serving per `config.metrics`; None when it is off or cannot listen (the
        node runs on without its pages, and the log says why)."""
        listen = config.metrics.listen
        if listen is None:
            return None
        if not ipaddress.ip_address(listen[0]).is_loopback:
            log.warning("METRICS AND DASHBOARD ARE OPEN TO THE NETWORK on %s:%d "
                        "([metrics] allow_remote = yes): anyone who can reach it can read "
                        "this node's workers, peers, tasks and events", *listen)
        observer = Observer(config, snapshot)
        try:
            server = OperatorServer(listen, observer.observations)
        except OSError as exc:
            log.error("cannot serve /metrics and the dashboard on %s:%d: %s", listen[0],
                      listen[1], exc.strerror or exc)
            return None
        pages = cls(observer, server)
        observer.start()
        pages._thread.start()
        log.info("metrics at http://%s:%d/metrics, dashboard at http://%s:%d/",
                 listen[0], server.server_address[1], listen[0], server.server_address[1])
        return pages

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        try:
            self.server.shutdown()
            self.server.server_close()
        finally:
            self.observer.stop()

