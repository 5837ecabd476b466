"""The README's quick start and configuration samples stay true."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_quick_start_is_two_commands_that_exist() -> None:
    first = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first is not None and README.index(first.group(0)) < README.index("## ")
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines() if line.strip()]
    assert commands == ["./dev.sh demo", "./dev.sh test"]
    assert (ROOT / "dev.sh").stat().st_mode & 0o111
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./dev.sh test" in ci


def test_every_toml_sample_parses() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", README, re.S)
    assert len(blocks) >= 7
    sections = set()
    for block in blocks:
        sections.update(tomllib.loads(block))
    assert {"tariffs", "prepay", "notify", "historian", "opcua", "billing"} <= sections


def test_every_cli_command_in_the_reference_exists() -> None:
    from openprepay.core.cli import build_cli

    cli = build_cli()
    named = set(re.findall(r"^\| `openprepay ([a-z0-9-]+)", README, re.M))
    assert named and named <= set(cli.commands), sorted(named - set(cli.commands))
