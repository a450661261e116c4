"""The board's HTTP server: Python's own threading HTTP server, one thread per connection (a
followed log is one long response), pages from jinja2 templates, scripts and styles from the
package, JSON for everything the pages fetch.

Nothing here reaches beyond this machine, and nothing a page loads comes from elsewhere: every
response carries a Content-Security-Policy that lets a page load only from the board itself.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import logging
import mimetypes
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import runner.host.board.actions as actions
from runner.core.errors import NoSuchRunError, RunError, RunnerError
from runner.core.rundir import RunDir, read_record
from runner.host.board.access import Access, NotServed, inside
from runner.host.board.chat import Chats
from runner.host.board.runs import TAIL, Runs, fresh, read_from, read_metrics_from

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
MAX_BODY = 1 << 20
# A page may load only what the board serves: no other origin, no inline script.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# A run's own files are shown, never run: no script, no style, no plugin, in a sandbox.
FILE_CSP = "default-src 'none'; img-src 'self'; sandbox"
# What a run's files may be shown as in the browser; anything else is a download.
INLINE = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
TEXT = {".log", ".txt", ".json", ".jsonl", ".yaml", ".yml", ".md", ".csv", ".tsv", ".sh", ".sbatch", ".py",
        ".cfg", ".ini", ".toml", ""}  # fmt: skip
PAGES = {"/": "runs.html", "/compare": "compare.html", "/jobs": "jobs.html"}


@dataclass
class Board:
    """What the server serves: the runs, the job specs, and who may do what."""

    runs: Runs
    jobs: actions.Jobs
    access: Access
    base: Path  # where relative paths in specs start, as the command line's working directory
    executor: str = "docker"
    state_dir: Path = field(default_factory=actions.state_dir)
    poll_s: float = 0.5
    chats: Chats | None = None
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if self.chats is None:
            self.chats = Chats(self.base, self.state_dir)
        import jinja2

        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=jinja2.StrictUndefined
        )

    def page(self, name: str, **values: Any) -> bytes:
        return self.templates.get_template(name).render(read_only=self.access.read_only, **values).encode()


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a followed log does not keep the board from stopping
    allow_reuse_address = True

    def __init__(self, board: Board):
        self.board = board
        family_host = board.access.host
        if ":" in family_host:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__((family_host, board.access.port), Handler)

    def shutdown(self) -> None:
        self.board.stopping.set()
        super().shutdown()
        if self.board.chats:
            self.board.chats.close()


def serve(board: Board, ready=None) -> None:
    """Serve until interrupted. `ready(server)` is called once it listens (the port is known)."""
    server = Server(board)
    if board.access.port == 0:  # the port the system chose: in the printed address and the cookie's name
        board.access = dataclasses.replace(board.access, port=server.server_address[1])
    if ready:
        ready(server)
    reaper = threading.Thread(target=_housekeeping, args=(board,), daemon=True)
    reaper.start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        board.stopping.set()
        server.server_close()
        if board.chats:
            board.chats.close()


def _housekeeping(board: Board) -> None:
    while not board.stopping.wait(30):
        actions.reap()
        if board.chats:
            board.chats.stop_idle()


class Handler(BaseHTTPRequestHandler):
    server: Server
    server_version = "runner-board"

    def version_string(self) -> str:
        return self.server_version

    # --- plumbing -----------------------------------------------------------------------------

    @property
    def board(self) -> Board:
        return self.server.board

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the base class's name)
        log.debug("%s %s", self.address_string(), format % args)  # every poll: only when debugging

    def _headers(self, status: int, content_type: str, length: int | None = None, csp: str = CSP,
                 extra: dict[str, str] | None = None) -> None:  # fmt: skip
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Content-Security-Policy", csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Cache-Control", "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: str, **kwargs: Any) -> None:
        self._headers(status, content_type, len(body), **kwargs)
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value: Any, status: int = 200) -> None:
        self._send(status, json.dumps(value, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        if self.path.startswith("/api/"):
            self._json({"error": message}, status)
        else:
            body = self.board.page("error.html", status=status, message=message)
            self._send(status, body, "text/html; charset=utf-8")

    # --- access ---------------------------------------------------------------------------------

    def _admitted(self, query: dict[str, list[str]]) -> bool:
        access = self.board.access
        if not access.allowed_host(self.headers.get("Host")):
            self._error(HTTPStatus.MISDIRECTED_REQUEST, "this board answers to its loopback address only")
            return False
        if self.path.startswith("/static/"):
            return True  # runner's own scripts and styles are no secret: an error page is styled too
        given = (query.get("token") or [None])[0]
        token = access.token_of(given, self.headers.get("Cookie"), self.headers.get("Authorization"))
        if not access.authorized(token):
            self._error(HTTPStatus.UNAUTHORIZED, "this board needs its token: open the address `runner board` "
                        "printed (it ends with ?token=...)")  # fmt: skip
            return False
        if given and self.command in ("GET", "HEAD") and not self.path.startswith("/api/"):
            # The token leaves the address bar (and the history) for a cookie.
            parts = urlsplit(self.path)
            rest = urlencode({k: v for k, v in query.items() if k != "token"}, doseq=True)
            self._headers(HTTPStatus.SEE_OTHER, "text/plain", 0,
                          extra={"Location": parts.path + (f"?{rest}" if rest else ""),
                                 "Set-Cookie": access.set_cookie()})  # fmt: skip
            return False
        return True

    def _may_act(self) -> bool:
        """A POST that changes something: not on a read-only board, and only from the board's own
        pages (a JSON body and a same-origin request, which another site's page cannot send)."""
        if self.board.access.read_only:
            self._error(HTTPStatus.FORBIDDEN, "this board is read-only")
            return False
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON (Content-Type: application/json)")
            return False
        origin, host = self.headers.get("Origin"), self.headers.get("Host")
        site = self.headers.get("Sec-Fetch-Site")
        if (origin and origin != f"http://{host}") or (site and site not in ("same-origin", "none")):
            self._error(HTTPStatus.FORBIDDEN, "actions are taken from the board's own pages only")
            return False
        return True

    def _body(self) -> dict[str, Any] | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a request body is at most {MAX_BODY} bytes")
            return None
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._error(HTTPStatus.BAD_REQUEST, "the request body is not JSON")
            return None
        if not isinstance(body, dict):
            self._error(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
            return None
        return body

    # --- dispatch ---------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self._dispatch(self._get)

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def _dispatch(self, handler) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if not self._admitted(query):
            return
        try:
            handler(unquote(parts.path), query)
        except (NoSuchRunError, NotServed) as e:
            self._error(HTTPStatus.NOT_FOUND, str(e))
        except RunnerError as e:  # refused as the command line refuses it: the run's state, a permission
            self._error(HTTPStatus.CONFLICT if isinstance(e, RunError) else HTTPStatus.BAD_REQUEST, str(e))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away (a closed tab, a followed log)
        except Exception as e:  # a bug: answer, and keep serving everyone else
            log.exception("%s %s failed", self.command, self.path)
            try:
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(e).__name__}: {e}")
            except OSError:
                pass

    def _get(self, path: str, query: dict[str, list[str]]) -> None:
        if path in PAGES and not (path == "/jobs" and self.board.access.read_only):
            return self._send(200, self.board.page(PAGES[path]), "text/html; charset=utf-8")
        if m := re.fullmatch(r"/runs/([\w.-]+)", path):
            self.board.runs.get(m[1])  # a page only for a run this board lists
            return self._send(200, self.board.page("run.html", run_id=m[1]), "text/html; charset=utf-8")
        if path.startswith("/static/"):
            return self._file(inside(STATIC, path[len("/static/") :]), static=True)
        if m := re.fullmatch(r"/runs/([\w.-]+)/files/(.+)", path):
            return self._file(inside(self.board.runs.get(m[1]).dir.path, m[2]), static=False)
        if path == "/api/runs":
            runs = self.board.runs
            rows = [runs.summary(fresh(r) if r.status == "running" else r) for r in runs.records()]
            return self._json({"runs": rows, "read_only": self.board.access.read_only})
        if m := re.fullmatch(r"/api/runs/([\w.-]+)", path):
            return self._json(self.board.runs.detail(self.board.runs.get(m[1])))
        if m := re.fullmatch(r"/api/runs/([\w.-]+)/metrics", path):
            rows, end = read_metrics_from(self.board.runs.get(m[1]).dir, 0)
            return self._json({"rows": rows, "next": end})
        if m := re.fullmatch(r"/api/runs/([\w.-]+)/events", path):
            return self._events(self.board.runs.get(m[1]).run_dir, query)
        if (path == "/jobs" or path.startswith("/api/jobs")) and self.board.access.read_only:
            return self._error(
                HTTPStatus.NOT_FOUND, "a read-only board submits nothing, and shows no job specs"
            )
        if path == "/api/jobs":
            return self._json({"root": str(self.board.jobs.root), "jobs": self.board.jobs.list(),
                               "executors": list(actions.EXECUTORS), "executor": self.board.executor})  # fmt: skip
        if path.startswith("/api/jobs/"):
            spec = self.board.jobs.path(path[len("/api/jobs/") :])
            return self._json(
                {"job": path[len("/api/jobs/") :], "text": spec.read_text(encoding="utf-8", errors="replace")}
            )
        self._error(HTTPStatus.NOT_FOUND, f"nothing at {path}")

    def _post(self, path: str, query: dict[str, list[str]]) -> None:
        if not self._may_act():
            return
        body = self._body()
        if body is None:
            return
        board = self.board
        if path in ("/api/jobs/validate", "/api/jobs/submit"):
            spec = board.jobs.path(str(body.get("job", "")))
            if path.endswith("validate"):
                return self._json(actions.validate(spec, board.base))
            result = actions.submit(
                spec, str(body.get("executor") or board.executor), board.base, board.state_dir
            )
            return self._json(result, 200 if result["ok"] else 422)
        if m := re.fullmatch(r"/api/runs/([\w.-]+)/(stop|resume|chat)", path):
            record = board.runs.get(m[1])
            if m[2] == "stop":
                return self._json(actions.stop(record))
            if m[2] == "resume":
                return self._json(actions.resume(record, board.base, board.state_dir))
            assert board.chats is not None
            max_tokens = body.get("max_tokens")
            if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
                return self._error(HTTPStatus.BAD_REQUEST, "max_tokens must be a whole number above 0")
            return self._json(board.chats.ask(record, body.get("messages"), max_tokens))
        self._error(HTTPStatus.NOT_FOUND, f"nothing to do at {path}")

    # --- files ----------------------------------------------------------------------------------

    def _file(self, path: Path | None, static: bool) -> None:
        if path is None:
            return self._error(HTTPStatus.NOT_FOUND, "no such file here")
        suffix = path.suffix.lower()
        if static:
            kind = {".js": "text/javascript", ".css": "text/css", ".woff2": "font/woff2"}.get(suffix)
            kind = kind or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            extra, csp = {}, CSP
        elif suffix in INLINE:
            kind, extra, csp = INLINE[suffix], {}, FILE_CSP
        elif suffix in TEXT and path.stat().st_size < 64 << 20:
            kind, extra, csp = "text/plain; charset=utf-8", {}, FILE_CSP
        else:
            kind, csp = "application/octet-stream", FILE_CSP
            extra = {"Content-Disposition": f'attachment; filename="{_ascii(path.name)}"'}
        if kind.startswith("text/") and "charset" not in kind:
            kind += "; charset=utf-8"
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self._headers(200, kind, size, csp=csp, extra=extra)
            if self.command != "HEAD":
                shutil.copyfileobj(f, self.wfile, 1 << 16)

    # --- a run's log, metrics and state as they change: server-sent events ---------------------

    def _events(self, run_dir: str, query: dict[str, list[str]]) -> None:
        run = RunDir(run_dir)
        offset = _int(query.get("log"), None)
        metrics_at = _int(query.get("metrics"), 0)
        if offset is None:
            size = run.log.stat().st_size if run.log.exists() else 0
            offset = max(0, size - TAIL)
            if offset:  # start at a line, and say what was left out
                offset = _next_line(run.log, offset)
        self._headers(200, "text/event-stream; charset=utf-8", extra={"X-Accel-Buffering": "no"})
        if self.command == "HEAD":
            return
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._event("hello", {"log": offset, "skipped": offset})
        state, last_beat, last_fresh = None, time.monotonic(), 0.0
        while not self.board.stopping.is_set():
            sent = False
            chunk = read_from(run.log, offset, 1 << 18)
            if chunk:
                offset += len(chunk)
                text = decoder.decode(chunk)
                if text:
                    self._event("log", {"text": text, "offset": offset})
                sent = True
            rows, metrics_at_new = read_metrics_from(run, metrics_at)
            if rows:
                self._event("metrics", {"rows": rows, "next": metrics_at_new})
                metrics_at, sent = metrics_at_new, True
            now = time.monotonic()
            try:
                record = read_record(run_dir)
            except RunnerError:  # deleted while followed
                self._event("end", {"state": None})
                return
            if record.status == "running" and record.container and now - last_fresh > 2:
                record.run_dir = run_dir
                record, last_fresh = fresh(record), now
            if record.status != state:
                state = record.status
                record.run_dir = run_dir
                self._event("state", self.board.runs.summary(record))
                sent = True
            if state != "running" and not sent:
                self._event("end", {"state": state})
                return
            if now - last_beat > 10:
                self.wfile.write(b": still here\n\n")  # finds a closed tab: the write fails
                self.wfile.flush()
                last_beat = now
            if not sent:
                time.sleep(self.board.poll_s)

    def _event(self, name: str, data: Any) -> None:
        payload = json.dumps(data, ensure_ascii=False)
        self.wfile.write(f"event: {name}\ndata: {payload}\n\n".encode())
        self.wfile.flush()


def _next_line(path: Path, offset: int) -> int:
    data = read_from(path, offset, 1 << 16)
    cut = data.find(b"\n")
    return offset + cut + 1 if cut >= 0 else offset


def _int(values: list[str] | None, default: int | None) -> int | None:
    try:
        return max(0, int(values[0])) if values else default
    except ValueError:
        return default


def _ascii(name: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
