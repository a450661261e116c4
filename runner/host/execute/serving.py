"""`runner serve` in the run's image: the server listens on a unix socket in a directory shared
with the container, which keeps its network off, and this process forwards a loopback (or
chosen) TCP port to it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from runner.core.errors import RunError
from runner.core.rundir import RunRecord
from runner.host.execute.result_tools import tool_container
from runner.host.render.lockdown import job_user


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


def _forward(sock: Path):
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_unix_connection(str(sock))
        except OSError:  # the server in the container is not listening yet
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))
        for w in (up_w, client_w):
            w.close()

    return handle


def serve_in_image(
    record: RunRecord, module_args: list[str], host: str, port: int, api_key: str | None,
    sink: Callable[[bytes], None],
) -> int:  # fmt: skip
    directory = Path(tempfile.mkdtemp(prefix="runner-serve-"))
    uid, gid = job_user(os.getuid(), os.getgid())
    if (uid, gid) != (os.getuid(), os.getgid()):
        os.chown(directory, uid, gid)  # root submitted: the server runs unprivileged
    sock = directory / "api.sock"
    try:
        return asyncio.run(_serve(record, [*module_args, "--uds", str(sock)], directory, sock, host, port,
                                  api_key, sink))  # fmt: skip
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _serve(record, module_args, directory, sock, host, port, api_key, sink) -> int:
    docker, config = tool_container(record, module_args, sink, writes=(str(directory),))
    if api_key:
        config["environment"]["RUNNER_API_KEY"] = api_key
    try:
        server = await asyncio.start_server(_forward(sock), host, port)
    except OSError as e:
        raise RunError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    container = docker.start(config)
    sink(f"serving on http://{host}:{port}/v1 from container {config['name']} (no network; "
         f"a unix socket carries the requests)\n".encode())  # fmt: skip

    def follow() -> None:
        for chunk in container.logs(stream=True, follow=True):
            sink(chunk)

    threading.Thread(target=follow, daemon=True).start()
    ended = loop.run_in_executor(None, container.wait)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([ended, stopped], return_when=asyncio.FIRST_COMPLETED)
        server.close()
        if not ended.done():
            await loop.run_in_executor(None, lambda: container.stop(timeout=20))
        code = (await ended)["StatusCode"]
        return 0 if stopped.done() else code
    finally:
        stopped.cancel()
        container.remove(force=True)
