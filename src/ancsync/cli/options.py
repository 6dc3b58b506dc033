"""Command-line options that several commands share."""

from __future__ import annotations

from typing import Annotated

import typer

VerboseOption = Annotated[
    bool, typer.Option("--verbose", "-v", help="Debug logging (as --log-level debug).")
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print the result as one JSON object per line, for scripts."),
]
ThingsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--thing",
        metavar="NAME",
        help="A device (thing name); repeat for more.",
        show_default=False,
    ),
]
AwsOption = Annotated[
    bool,
    typer.Option(
        "--aws",
        help="Use AWS IoT through boto3 (AWS credentials and region from the environment).",
    ),
]
RegionOption = Annotated[
    str | None,
    typer.Option("--region", envvar="AWS_REGION", metavar="REGION", help="AWS region (--aws)."),
]
