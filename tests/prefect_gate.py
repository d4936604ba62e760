"""A gate in front of the Prefect API that a test shuts to keep a daemon's scan in flight."""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.parse


class PrefectGate:
    """A TCP relay in front of the Prefect API that holds every request creating a flow run while shut.

    A daemon pointed at ``url`` has a scan in flight for as long as the gate stays shut: its worker
    waits for the answer to "create this scan's run", which never comes (the request never reaches
    the server). Everything else (reads, logs, events over websockets) passes through unchanged.
    ``open()`` lets later requests through and drops the held ones. Used as a context manager.
    """

    _CREATES = (b"/create_flow_run HTTP/1.", b"POST /api/flow_runs/ HTTP/1.")

    def __init__(self, api_url: str) -> None:
        parts = urllib.parse.urlsplit(api_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}{parts.path}"
        self.holding = threading.Event()  # set once a run-creating request is being held
        self._opened = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> PrefectGate:
        threading.Thread(target=self._accept, name="prefect-gate", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._opened.set()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                s.close()

    def open(self) -> None:
        self._opened.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if requests and not self._opened.is_set() and any(c in data for c in self._CREATES):
                    self.holding.set()
                    self._opened.wait()
                    return  # dropped: the request never reaches the server
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
