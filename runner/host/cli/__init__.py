"""The `runner` command. Thin: parse arguments, call one library function, print.

Importing this package must stay cheap: no torch, transformers, peft or pydantic (a test checks it).
One module per group of commands: jobs, runs, results (chat, eval, export, serve), images, board.
"""

from __future__ import annotations

import click

from runner import __version__
from runner.core.errors import RunnerError, SpecError
from runner.host.cli import board, images, jobs, results, runs


class _Group(click.Group):
    """Turns library errors into one clear message and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except SpecError as e:
            for problem in e.problems:
                click.echo(str(problem), err=True)
            n = len(e.problems)
            click.echo(f"{n} problem{'s' if n != 1 else ''}; nothing was started.", err=True)
            ctx.exit(e.exit_code)
        except RunnerError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="runner")
def main() -> None:
    """Fine-tune open LLMs on GPU servers that have no internet."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")


for _module in (jobs, runs, results, images, board):
    for _command in _module.COMMANDS:
        main.add_command(_command)
