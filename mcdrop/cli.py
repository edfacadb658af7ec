"""The ``mcdrop`` command: serve, predict, evaluate, bench (also ``python -m mcdrop``).

Each subcommand imports what it needs only when it runs, so ``mcdrop --help`` stays fast
and the core library never imports the service.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _serve(argv: Sequence[str]) -> int:
    try:
        from service.server import main as serve_main
    except ImportError as exc:  # pragma: no cover - only before the service exists
        print(f"mcdrop serve: the service is not available ({exc})", file=sys.stderr)
        return 1
    return serve_main(list(argv))


def _predict(argv: Sequence[str]) -> int:
    from mcdrop.predict_cli import main as predict_main

    return predict_main(list(argv))


def _evaluate(argv: Sequence[str]) -> int:
    from mcdrop.evaluation import main as evaluate_main

    return evaluate_main(list(argv))


def _inspect(argv: Sequence[str]) -> int:
    from mcdrop.inspect_cli import main as inspect_main

    return inspect_main(list(argv))


def _bench(argv: Sequence[str]) -> int:
    from mcdrop.bench import main as bench_main

    return bench_main(list(argv))


COMMANDS = {
    "serve": (_serve, "serve the models of a repository folder over HTTP"),
    "predict": (_predict, "send inputs from a file to a running server and print the answer"),
    "evaluate": (_evaluate, "score a repository model on a data file and write a report"),
    "bench": (_bench, "time the MC engine against the naive loop and input replication"),
    "inspect": (_inspect, "list every dropout site of repository models, sampled or not"),
}


def version() -> str:
    """The installed mcdrop version (read without importing torch, so the answer is quick)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("mcdrop")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from mcdrop import __version__

        return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mcdrop COMMAND ...``; returns the exit status (2 for a usage error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="mcdrop",
        description="Monte Carlo dropout uncertainty: engine, service and tools.",
        epilog="Run 'mcdrop COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "command",
        choices=sorted(COMMANDS),
        help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items()),
    )
    if not args or args[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if args else 2
    if args[0] in ("--version", "-V"):
        print(f"mcdrop {version()}")
        return 0
    if args[0] not in COMMANDS:
        parser.parse_args(args[:1])  # prints the usage error and exits 2
    return COMMANDS[args[0]][0](args[1:])


if __name__ == "__main__":
    sys.exit(main())
