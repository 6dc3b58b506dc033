"""Command-line options that several commands share."""

from __future__ import annotations

from typing import Annotated

import typer

VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]
ThingsOption = Annotated[
    list[str] | None,
    typer.Option("--thing", help="A device (thing name); repeat for more.", show_default=False),
]
