"""optuna-dashboard on a study storage, with an artifact store beside it.

The fit's verdict shows as the study note (``/dashboard/studies/<id>/note``) and its figure on the
study's main page; user attributes, the fit result among them, show as JSON.
"""
from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref import simple_server
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from optuna.artifacts import FileSystemArtifactStore

from tuner.storage import is_url, open_storage

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except (socket.gaierror, ValueError):
            return False


def artifact_dir(storage: str) -> Path:
    """Beside the storage file (``tuner.journal`` -> ``tuner-artifacts``), or in the working directory."""
    if is_url(storage):
        from sqlalchemy.engine import make_url

        url = make_url(storage)
        if url.get_backend_name() == "sqlite" and url.database:
            path = Path(url.database)
            return path.with_name(f"{path.stem}-artifacts")
        return Path("tuner-artifacts")
    path = Path(storage)
    return path.with_name(f"{path.stem}-artifacts")


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a page loads many files at once; Ctrl+C must not wait for them


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # one line per request is noise here
        pass


def make_server(storage: str, host: str, port: int) -> WSGIServer:
    """optuna-dashboard's WSGI app on the storage, bound to host:port (OSError if it cannot bind).

    Binding before anything is printed means a busy port is one clear error, not a banner first.
    """
    import optuna_dashboard

    opened = open_storage(storage, create=False)
    app = optuna_dashboard.wsgi(opened, artifact_store=_ArtifactStore(artifact_dir(storage)))
    return simple_server.make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)


class _ArtifactStore(FileSystemArtifactStore):
    """Optuna's file store, whose folder is made at the first upload: serving a storage creates
    nothing beside it (and a busy port leaves nothing behind)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self._folder = folder

    def write(self, artifact_id: str, content_body) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)
        super().write(artifact_id, content_body)
