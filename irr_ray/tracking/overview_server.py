"""The study overview's web server (``irr-ray ui`` serves it next to the MLflow UI).

Routes: ``/`` the overview (:func:`irr_ray.report.html.overview_page`), ``/report`` the report page,
``/pareto.png`` the study's Pareto plot (rendered from the same rows into a temporary directory when
``irr-ray report`` has not written one yet — the study directory is never written to), ``/report.md``
the study's file as text, ``/health``. Every page is read from the study's documents per request.

Why the standard library's server: the pages are a few kilobytes, there is one user, and nothing
else needs installing. It binds where the MLflow UI does (127.0.0.1 unless ``irr-ray ui --host`` asks
otherwise) and, like MLflow ≥ 3.5, answers only requests whose Host header names localhost, a
loopback or private address, or a host in ``allowed_hosts`` — a page on another site that rebinds
its name to 127.0.0.1 cannot read the study.
"""

from __future__ import annotations

import ipaddress
import socket
import tempfile
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from irr_ray.errors import ConfigError, IrrRayError
from irr_ray.report.html import PARETO_PATH, REPORT_MD_PATH, REPORT_PATH, overview_page, report_page
from irr_ray.report.overview import StudyOverview, load_overview


def host_allowed(host_header: str, allowed_hosts: frozenset[str] = frozenset()) -> bool:
    """Whether a request's Host header names this machine as MLflow's default allows it."""
    name = urlsplit(f"//{host_header}").hostname or ""
    if name == "localhost" or name in allowed_hosts:
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private


def render_pareto(ov: StudyOverview, out_dir: Path) -> Path:
    """The study's ``pareto.png`` if it has one, else the same plot drawn now under ``out_dir``."""
    from irr_ray.report.build import PARETO_NAME, pareto_title
    from irr_ray.report.pareto import plot_pareto

    if ov.pareto_png is not None:
        return ov.pareto_png
    return plot_pareto(ov.rows, out_dir / PARETO_NAME, title=pareto_title(ov.name, ov.rows))


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class OverviewServer:
    """The overview on ``host:port`` (``port=0``: any free one), in a background thread."""

    def __init__(self, study_dir: str | Path, mlflow_url: str, host: str, port: int,
                 allowed_hosts: frozenset[str] = frozenset()) -> None:
        self.study_dir = Path(study_dir)
        self.mlflow_url = mlflow_url
        self.allowed_hosts = allowed_hosts
        self._scratch = tempfile.TemporaryDirectory(prefix="irr-ray-ui-")
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        try:
            self._server = server_class((host.strip("[]"), port), self._handler())
        except OSError as exc:
            self._scratch.cleanup()
            raise ConfigError(f"cannot serve the study overview on {host}:{port} ({exc.strerror or exc}): "
                              "pass another --port (or --port 0 for any free one)") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="irr-ray-overview", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> OverviewServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self._scratch.cleanup()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass  # one user, one terminal: no access log over the CLI's lines

            def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _text(self, status: HTTPStatus, text: str) -> None:
                self._send(status, text.encode(), "text/plain; charset=utf-8")

            def do_GET(self) -> None:  # noqa: N802 - the base class's name
                if not host_allowed(self.headers.get("Host", ""), server.allowed_hosts):
                    self._text(HTTPStatus.FORBIDDEN, "host not allowed (irr-ray ui --allowed-hosts)\n")
                    return
                path = urlsplit(self.path).path
                if path == "/health":
                    self._text(HTTPStatus.OK, "OK\n")
                    return
                if path not in ("/", REPORT_PATH, PARETO_PATH, REPORT_MD_PATH):
                    self._text(HTTPStatus.NOT_FOUND, f"not found: {path}\n")
                    return
                try:
                    ov = load_overview(server.study_dir, server.mlflow_url)
                except IrrRayError as exc:  # e.g. an attack.json replaced by another schema mid-study
                    self._text(HTTPStatus.INTERNAL_SERVER_ERROR, f"{exc}\n")
                    return
                if path == "/":
                    self._send(HTTPStatus.OK, overview_page(ov).encode(), "text/html; charset=utf-8")
                elif path == REPORT_PATH:
                    self._send(HTTPStatus.OK, report_page(ov).encode(), "text/html; charset=utf-8")
                elif path == PARETO_PATH:
                    png = render_pareto(ov, Path(server._scratch.name))
                    self._send(HTTPStatus.OK, png.read_bytes(), "image/png")
                elif ov.report_md is not None:
                    self._send(HTTPStatus.OK, ov.report_md.read_bytes(), "text/plain; charset=utf-8")
                else:
                    self._text(HTTPStatus.NOT_FOUND, f"no report.md in {ov.study_dir} yet: run "
                                                     f"`irr-ray report --study {ov.study_dir}`\n")

        return Handler
