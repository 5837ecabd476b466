"""How a command takes a password: never from its arguments.

Arguments are visible to every user of the machine (`ps`, `/proc/<pid>/cmdline`) and kept
in shell history. A command that needs a password prompts for it (hidden, typed twice), or
reads it from an environment variable (`--password-env VAR`) or from a file
(`--password-file FILE`, `-` for standard input; one trailing line break is dropped).
`--password VALUE` is refused with the way to do it instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

REFUSED = (
    "a password on the command line is visible to every user of this machine and stays in "
    "the shell history: leave it out to be prompted, or use --password-env VAR or "
    "--password-file FILE"
)


def _refuse(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise click.BadParameter(REFUSED, ctx=ctx, param=param)


def password_options(f: F) -> F:
    """Add `--password-env` and `--password-file` (and the refused `--password`)."""
    f = click.option(
        "--password-file",
        type=click.Path(dir_okay=False, allow_dash=True),
        help="Read the password from this file ('-': standard input).",
    )(f)
    f = click.option(
        "--password-env", metavar="VAR", help="Read the password from this environment variable."
    )(f)
    f = click.option(
        "--password",
        "refused_password",
        hidden=True,
        expose_value=False,
        callback=_refuse,
        is_eager=True,
    )(f)
    return f


def read_password(password_env: str | None, password_file: str | None, *, prompt: str) -> str:
    """The password from the variable, the file, or a hidden prompt typed twice."""
    if password_env and password_file:
        raise click.UsageError("give --password-env or --password-file, not both")
    if password_env:
        value = os.environ.get(password_env)
        if value is None:
            raise click.BadParameter(
                f"environment variable {password_env} is not set", param_hint="--password-env"
            )
        return value
    if password_file:
        try:
            text = sys.stdin.read() if password_file == "-" else Path(password_file).read_text()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {password_file}: {exc.strerror}", param_hint="--password-file"
            ) from None
        return text.removesuffix("\n").removesuffix("\r")
    value: str = click.prompt(prompt, hide_input=True, confirmation_prompt=True)
    return value
