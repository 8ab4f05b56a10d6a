"""The ``attnkit`` command: ``info`` (and, as they land, ``demo``, ``bench``, ``check``).

Subcommands register themselves in ``COMMANDS`` as ``name -> (help, add_arguments, run)`` so each
lives in its own module and this file stays a dispatcher.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import platform
import sys
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

import attnkit
from attnkit.ops import backends

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _module_version(name: str) -> str:
    if importlib.util.find_spec(name) is None:
        return "not installed"
    try:
        return str(importlib.import_module(name).__version__)
    except Exception as exc:  # a broken install is worth reporting, not crashing on
        return f"fails to import ({type(exc).__name__}: {exc})"


def _info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="device to check backends on (default: cuda if available, else cpu)")


def run_info(args: argparse.Namespace) -> int:
    """Print versions, the device, and which backends can run here (and why not)."""
    console = Console()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    versions = Table(title="attnkit info", show_header=False)
    versions.add_row("attnkit", attnkit.__version__)
    versions.add_row("python", platform.python_version())
    versions.add_row("torch", torch.__version__)
    versions.add_row("triton", _module_version("triton"))
    versions.add_row("CUDA available", str(torch.cuda.is_available()))
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        versions.add_row("GPU", f"{props.name} (sm_{props.major}{props.minor}, "
                                f"{props.multi_processor_count} SMs, "
                                f"{props.total_memory / 2**30:.0f} GiB)")
    versions.add_row("checked device", device)
    console.print(versions)
    table = Table(title=f"attention backends on {device}")
    table.add_column("backend")
    table.add_column("can run")
    table.add_column("why not")
    for name, reason in backends.backend_status(device).items():
        table.add_row(name, "yes" if reason is None else "no", reason or "")
    console.print(table)
    return 0


COMMANDS: dict[str, Command] = {
    "info": ("versions, device, and which backends can run here", _info_arguments, run_info),
}

# Subcommands that live in their own modules: name -> module exposing COMMAND.
_EXTERNAL = {"demo": "attnkit.demo", "bench": "attnkit.bench", "check": "attnkit.check"}


def _load_external() -> None:
    for name, module in _EXTERNAL.items():
        if name in COMMANDS or importlib.util.find_spec(module) is None:
            continue
        COMMANDS[name] = importlib.import_module(module).COMMAND


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``attnkit`` console script."""
    _load_external()
    parser = argparse.ArgumentParser(prog="attnkit", description=attnkit.__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    return COMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
