"""The ``runtrack`` command: list, watch, run and serve runs from a shell.

Needs the ``cli`` extra (``pip install 'runtrack[cli]'``); ``import runtrack`` never
imports this package. Run it as ``runtrack`` or ``python -m runtrack``; ``runtrack --help``
lists the subcommands, and docs/cli.md documents them with their ``--json`` shapes and
exit codes.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

try:
    import click
    import rich  # noqa: F401 - checked here so that a missing extra is named at once
except ImportError as exc:  # pragma: no cover - the dev environment has the extra
    raise ImportError(
        f"the runtrack command needs the cli extra: pip install 'runtrack[cli]' ({exc})"
    ) from exc

from runtrack import __version__
from runtrack.cli._app import (
    DEFAULT_REGISTRY_URL,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    CliState,
    Fail,
    configure_logging,
    masked,
)
from runtrack.cli._demo import demo_command
from runtrack.cli._follow import output_command
from runtrack.cli._requeue import requeue_command
from runtrack.cli._run import run_command
from runtrack.cli._runs import cancel_command, list_command, prune_command, show_command
from runtrack.cli._serve import serve_command
from runtrack.cli._stats import managers_command, stats_command
from runtrack.cli._watch import watch_command

__all__ = ["cli", "main"]

#: Exit code when stdout's reader went away (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141


class _Group(click.Group):
    """Lists subcommands in the order they were added, and keeps errors to one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Fail as exc:
            click.echo(f"error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:
            # Whoever read stdout went away (`runtrack output ID | head`): stop quietly, with
            # the code a shell reports for a process that SIGPIPE ended (128 + 13).
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(EXIT_BROKEN_PIPE)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            state = ctx.find_object(CliState)
            if state is not None and state.debug:
                traceback.print_exception(exc)
            text = str(exc) if state is None else masked(str(exc), state.url)
            message = text.splitlines()[0] if text else ""
            click.echo(f"error: {type(exc).__name__}: {message}".rstrip(": "), err=True)
            ctx.exit(EXIT_FAILED)


@click.group(
    "runtrack",
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--registry",
    "url",
    metavar="URL",
    envvar="RUNTRACK_REGISTRY_URL",
    show_envvar=True,
    default=DEFAULT_REGISTRY_URL,
    show_default=True,
    help="The registry: sqlite+aiosqlite:///path.db, postgresql+asyncpg://user@host/db, "
    "mysql+asyncmy://user@host/db, redis://host:6379/0.",
)
@click.option(
    "--prefix",
    envvar="RUNTRACK_REGISTRY_PREFIX",
    show_envvar=True,
    help="The SQL registry's table prefix or the Redis registry's key prefix, when the "
    "services use one other than the default.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks and runtrack's debug log.")
@click.version_option(__version__, "--version", prog_name="runtrack")
@click.pass_context
def cli(ctx: click.Context, url: str, prefix: str | None, debug: bool) -> None:
    """Inspect, follow and start runtrack runs in any registry.

    Exit codes: 0 ok; 1 the run failed (`runtrack run`: the command's own code); 2 bad
    arguments; 3 the registry is unreachable or misconfigured; 4 no such run.
    """
    configure_logging(debug)
    source = ctx.get_parameter_source("url")
    ctx.obj = CliState(
        url=url,
        prefix=prefix,
        debug=debug,
        url_from_command_line=source is click.core.ParameterSource.COMMANDLINE,
    )


for _command in (
    list_command,
    show_command,
    output_command,
    cancel_command,
    requeue_command,
    prune_command,
    stats_command,
    watch_command,
    run_command,
    managers_command,
    serve_command,
    demo_command,
):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``runtrack`` command (the console script's entry point)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="runtrack")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
