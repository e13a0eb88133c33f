"""Command-line options shared by several commands, declared once."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        metavar="NAME|DIR",
        help="Model folder or installed model name (default: the embedded model).",
    ),
]
TeacherOption = Annotated[
    str | None,
    typer.Option(
        "--teacher",
        metavar="NAME|DIR",
        help="Autoregressive teacher (folder or name) replacing the bundle's.",
    ),
]
DeviceOption = Annotated[Device, typer.Option("--device", help="Where to run.")]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for batches (default: torch's); single sentences use one.",
    ),
]
MAX_SEED = 2**63 - 1  # a sentence's seed is derived from it in 64 signed bits
SeedOption = Annotated[
    int,
    typer.Option(
        "--seed", min=0, max=MAX_SEED, help="Seed of the sampling decoders (latent search)."
    ),
]
BatchTokensOption = Annotated[
    int, typer.Option("--batch-tokens", min=1, help="Source tokens per batch, padding included.")
]
