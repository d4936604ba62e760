"""A small Slack Web API on 127.0.0.1 for the real ``slack_sdk.WebClient`` (point ``base_url`` at ``.url``).

It speaks what slack_sdk 3.x sends: POST ``/api/<method>`` with ``Authorization: Bearer <token>``
and a JSON body (chat.postMessage) or a form body (auth.test, files.*), plus the external upload
URL that ``files.getUploadURLExternal`` hands out (a bare POST of the file's bytes, no token).

Posted messages are kept per channel and ts (``message(ts)``, with ``thread_ts`` for replies and
``replies(ts)`` for a thread); ``chat.update`` changes one and records it, and answers
``message_not_found`` once ``delete_message(ts)`` removed it, or the error ``refuse_updates(error)``
set (``cant_update_message``, ``edit_window_closed``). A reply to a deleted message whose thread
has no replies gets ``thread_not_found``, as Slack does.

Every call is recorded for assertions. ``fail_next(n)`` answers the next n API calls with
HTTP 429 + ``Retry-After``; ``go_down("refuse")`` closes the port (connection refused),
``go_down("500")`` answers every call with HTTP 500; ``come_back()`` restores service.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Call:
    method: str  # "chat.postMessage", or "upload" for the upload URL
    payload: dict[str, Any]  # JSON body or form fields
    headers: dict[str, str]
    body: bytes = b""
    status: int = 200


@dataclass
class _State:
    token: str
    channels: dict[str, str]  # name or id -> id
    calls: list[Call] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)  # file_id -> bytes received
    upload_names: dict[str, str] = field(default_factory=dict)
    shared: dict[str, dict[str, Any]] = field(default_factory=dict)  # file_id -> completeUploadExternal args
    fail_remaining: int = 0
    fail_status: int = 429
    retry_after: int = 1
    down_mode: str | None = None
    #: (channel id, ts) -> the message as it stands: text, blocks, thread_ts, reply_broadcast, edits.
    messages: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    refuse_update: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class SlackApiServer:
    """Start with ``with SlackApiServer(token=...) as slack:``; ``slack.url`` is the API base URL."""

    def __init__(self, *, token: str = "xoxb-test-token", channels: dict[str, str] | None = None) -> None:
        chans = channels or {"#slide-scanning": "C0SLIDES"}
        by_any = dict(chans)
        for name, cid in chans.items():
            by_any[cid] = cid
            by_any[name.lstrip("#")] = cid
        self.state = _State(token=token, channels=by_any)
        self._ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle

    def start(self) -> SlackApiServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler_class())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="slack-api", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SlackApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    # -- fault injection

    def fail_next(self, n: int, *, status: int = 429, retry_after: int = 1) -> None:
        with self.state.lock:
            self.state.fail_remaining = n
            self.state.fail_status = status
            self.state.retry_after = retry_after

    def go_down(self, mode: str = "refuse") -> None:
        """ "refuse": nothing listens on the port; "500": every call gets HTTP 500."""
        if mode == "refuse":
            self.stop()
        elif mode == "500":
            with self.state.lock:
                self.state.down_mode = "500"
        else:
            raise ValueError(mode)

    def come_back(self) -> None:
        with self.state.lock:
            self.state.down_mode = None
        if self._httpd is None:
            self.start()  # same port: the client keeps its base_url

    def delete_message(self, ts: str) -> None:
        """Someone deleted the message ``ts`` in Slack: updating it now answers message_not_found."""
        with self.state.lock:
            for key in [k for k in self.state.messages if k[1] == ts]:
                del self.state.messages[key]

    def refuse_updates(self, error: str | None) -> None:
        """Answer every chat.update with ``error`` (e.g. "edit_window_closed"); None: update again."""
        with self.state.lock:
            self.state.refuse_update = error

    # -- what happened

    def message(self, ts: str) -> dict[str, Any] | None:
        """The message ``ts`` as it stands now (after any chat.update), or None if deleted/unknown."""
        with self.state.lock:
            for (cid, mts), msg in self.state.messages.items():
                if mts == ts:
                    return {"channel": cid, "ts": mts, **msg}
        return None

    def replies(self, ts: str) -> list[dict[str, Any]]:
        """The replies in the thread of ``ts``, oldest first."""
        with self.state.lock:
            return [
                {"channel": cid, "ts": mts, **m}
                for (cid, mts), m in sorted(self.state.messages.items(), key=lambda kv: kv[0][1])
                if m.get("thread_ts") == ts
            ]

    @property
    def calls(self) -> list[Call]:
        with self.state.lock:
            return list(self.state.calls)

    def calls_to(self, method: str, *, ok_only: bool = False) -> list[Call]:
        return [c for c in self.calls if c.method == method and (not ok_only or c.status == 200)]

    @property
    def uploads(self) -> dict[str, bytes]:
        with self.state.lock:
            return dict(self.state.uploads)

    @property
    def shared(self) -> dict[str, dict[str, Any]]:
        with self.state.lock:
            return dict(self.state.shared)

    # -- the HTTP side

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                self._dispatch()

            def do_POST(self) -> None:
                self._dispatch()

            def _dispatch(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = urlsplit(self.path)
                if path.path.startswith("/upload/"):
                    self._upload(path.path.rsplit("/", 1)[1], body)
                elif path.path.startswith("/api/"):
                    self._api(path.path[len("/api/") :], self._payload(body, path.query), body)
                else:
                    self._send(404, b"not found", "text/plain")

            def _payload(self, body: bytes, query: str) -> dict[str, Any]:
                ctype = (self.headers.get("Content-Type") or "").lower()
                data: dict[str, Any] = dict(parse_qsl(query))
                if ctype.startswith("application/json"):
                    data.update(json.loads(body or b"{}"))
                elif body:
                    data.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
                return data

            def _record(self, method: str, payload: dict[str, Any], body: bytes, status: int) -> None:
                with server.state.lock:
                    server.state.calls.append(Call(method, payload, dict(self.headers.items()), body, status))

            def _api(self, method: str, payload: dict[str, Any], body: bytes) -> None:
                st = server.state
                with st.lock:
                    down = st.down_mode
                    failing = st.fail_remaining > 0
                    if failing:
                        st.fail_remaining -= 1
                    fail_status, retry_after = st.fail_status, st.retry_after
                if down == "500":
                    self._record(method, payload, body, 500)
                    return self._send(500, b"<html>Internal Server Error</html>", "text/html")
                if failing:
                    self._record(method, payload, body, fail_status)
                    extra = {"Retry-After": str(retry_after)} if fail_status == 429 else {}
                    return self._json(
                        {"ok": False, "error": "ratelimited"}, status=fail_status, headers=extra
                    )
                self._record(method, payload, body, 200)
                if self.headers.get("Authorization") != f"Bearer {st.token}":
                    return self._json({"ok": False, "error": "invalid_auth"})
                handler = getattr(self, "m_" + method.replace(".", "_"), None)
                if handler is None:
                    return self._json({"ok": False, "error": "unknown_method"})
                self._json(handler(payload))

            # Web API methods (only what the agent uses)

            def m_auth_test(self, p: dict[str, Any]) -> dict[str, Any]:
                return {
                    "ok": True,
                    "url": "https://lab.slack.test/",
                    "team": "Lab",
                    "user": "scanner-agent",
                    "team_id": "T0LAB",
                    "user_id": "U0BOT",
                    "bot_id": "B0BOT",
                }

            def m_chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
                cid = server.state.channels.get(str(p.get("channel", "")))
                if cid is None:
                    return {"ok": False, "error": "channel_not_found"}
                if not p.get("text") and not p.get("blocks"):
                    return {"ok": False, "error": "no_text"}
                thread_ts = p.get("thread_ts") or None
                with server.state.lock:
                    # A deleted parent keeps its thread only if it already had replies.
                    if (
                        thread_ts
                        and (cid, str(thread_ts)) not in server.state.messages
                        and not any(m.get("thread_ts") == thread_ts for m in server.state.messages.values())
                    ):
                        return {"ok": False, "error": "thread_not_found"}
                    ts = f"1700000000.{next(server._ids):06d}"
                    server.state.messages[(cid, ts)] = {
                        "text": p.get("text"),
                        "blocks": p.get("blocks"),
                        "thread_ts": thread_ts,
                        "reply_broadcast": _truthy(p.get("reply_broadcast")),
                        "edits": 0,
                    }
                return {
                    "ok": True,
                    "channel": cid,
                    "ts": ts,
                    "message": {"text": p.get("text"), "blocks": p.get("blocks"), "ts": ts},
                }

            def m_chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
                cid = str(p.get("channel", ""))
                if cid not in server.state.channels.values():  # chat.update takes an ID, never a name
                    return {"ok": False, "error": "channel_not_found"}
                ts = str(p.get("ts", ""))
                with server.state.lock:
                    msg = server.state.messages.get((cid, ts))
                    if msg is None:
                        return {"ok": False, "error": "message_not_found"}
                    if server.state.refuse_update:
                        return {"ok": False, "error": server.state.refuse_update}
                    msg.update(text=p.get("text"), blocks=p.get("blocks"), edits=msg["edits"] + 1)
                return {"ok": True, "channel": cid, "ts": ts, "text": p.get("text")}

            def m_files_getUploadURLExternal(self, p: dict[str, Any]) -> dict[str, Any]:
                if not p.get("filename") or not str(p.get("length", "")).isdigit():
                    return {"ok": False, "error": "invalid_arguments"}
                file_id = f"F{next(server._ids):08d}"
                with server.state.lock:
                    server.state.upload_names[file_id] = str(p["filename"])
                return {
                    "ok": True,
                    "file_id": file_id,
                    "upload_url": f"http://127.0.0.1:{server.port}/upload/{file_id}",
                }

            def m_files_completeUploadExternal(self, p: dict[str, Any]) -> dict[str, Any]:
                files = json.loads(p.get("files") or "[]")
                channel_id = p.get("channel_id")
                # Slack wants a channel ID here; a name like "#slide-scanning" is refused.
                if channel_id and channel_id not in server.state.channels.values():
                    return {"ok": False, "error": "invalid_channel"}
                with server.state.lock:
                    missing = [f["id"] for f in files if f.get("id") not in server.state.uploads]
                    if missing:
                        return {"ok": False, "error": "file_not_found"}
                    for f in files:
                        server.state.shared[f["id"]] = {
                            "title": f.get("title"),
                            "channel_id": channel_id,
                            "thread_ts": p.get("thread_ts"),
                            "initial_comment": p.get("initial_comment"),
                        }
                return {
                    "ok": True,
                    "files": [
                        {
                            "id": f["id"],
                            "title": f.get("title"),
                            "name": server.state.upload_names.get(f["id"]),
                        }
                        for f in files
                    ],
                }

            def _upload(self, file_id: str, body: bytes) -> None:
                with server.state.lock:
                    known = file_id in server.state.upload_names
                    if known:
                        server.state.uploads[file_id] = body
                self._record("upload", {"file_id": file_id}, body, 200 if known else 404)
                if not known:
                    return self._send(404, b"unknown upload", "text/plain")
                self._send(200, f"OK - {len(body)}".encode(), "text/plain")

            def _json(
                self, data: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None
            ) -> None:
                self._send(status, json.dumps(data).encode(), "application/json; charset=utf-8", headers)

            def _send(
                self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        return Handler


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in {"true", "1"}
