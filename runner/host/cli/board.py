"""`runner board`: the web board of the runs."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("output_dirs", nargs=-1, type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Off loopback the board needs its token (the default) or --read-only.")  # fmt: skip
@click.option(
    "--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="0: any free port."
)
@click.option("--token", envvar="RUNNER_BOARD_TOKEN", default=None,
              help="The token the board asks for [env: RUNNER_BOARD_TOKEN; default: a new random one, in the "
              "printed address].")  # fmt: skip
@click.option("--no-token", is_flag=True,
              help="Ask for no token: loopback on a machine of your own, or with --read-only.")  # fmt: skip
@click.option("--read-only", is_flag=True, help="Show runs; refuse submit, stop, resume and chat.")
@click.option("--jobs", "jobs_dir", default="jobs", show_default=True, type=click.Path(file_okay=False),
              help="The job specs the board can submit.")  # fmt: skip
@click.option("--executor", type=click.Choice(["docker", "local"]), default="docker", show_default=True,
              help="The executor a submit from the board uses by default.")  # fmt: skip
def board(output_dirs: tuple[str, ...], host: str, port: int, token: str | None, no_token: bool, read_only: bool,
          jobs_dir: str, executor: str) -> None:  # fmt: skip
    """A web page of the runs: their state, curves, logs and results; submit, stop, resume and chat.

    OUTPUT_DIRS are where runs are looked for, as in `runner ls` [default: the output directories
    of the known runs, $OUTPUT_DIR, and ./outputs]. Every script, style and font comes from
    runner itself: the page works with no internet. Stop it with Ctrl-C."""
    import logging

    from runner.core.errors import RunError
    from runner.host.board import Access, AccessError, Board, serve
    from runner.host.board.access import is_loopback
    from runner.host.board.actions import Jobs
    from runner.host.board.runs import Runs

    try:
        access = Access.configure(host, port, token, no_token, read_only)
    except AccessError as e:
        raise click.UsageError(str(e)) from None
    # What the board does (a model loaded for chat, a run signalled) is news, not a warning.
    said = logging.getLogger("runner.host.board")
    said.setLevel(logging.INFO)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("board: %(message)s"))
    said.addHandler(handler)
    said.propagate = False
    the_board = Board(
        runs=Runs([Path(d) for d in output_dirs]), jobs=Jobs(Path(jobs_dir).resolve()), access=access,
        base=Path.cwd(), executor=executor,
    )  # fmt: skip

    def ready(server) -> None:
        mode = " (read-only)" if read_only else ""
        click.echo(f"runner board{mode}: {the_board.access.url()}")
        if not is_loopback(host):
            click.echo("note: plain HTTP carries the token in the clear; across a network prefer an SSH tunnel "
                       f"(ssh -L {the_board.access.port}:127.0.0.1:{the_board.access.port} THIS-HOST, and a board "
                       "on 127.0.0.1) or TLS in front", err=True)  # fmt: skip
        click.echo("stop it with Ctrl-C", err=True)

    import signal
    import sys

    # SIGTERM (kill, a service manager) ends the board as Ctrl-C does: the model it loaded for chat is stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        serve(the_board, ready)
    except OSError as e:
        raise RunError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    except KeyboardInterrupt:
        click.echo("board stopped", err=True)


COMMANDS = (board,)
