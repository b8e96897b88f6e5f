"""`python -m phonevault.sync.emulator serve --port P --data DIR [--day N] [--size 2GB] [--seed S]`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from phonevault.sync.phone import parse_size

from .server import DEFAULT_SIZE, serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phonevault.sync.emulator")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run an emulated iPhone behind a usbmuxd on 127.0.0.1")
    run.add_argument("--port", type=int, default=0, help="usbmuxd TCP port (0 = any free port)")
    run.add_argument("--data", type=Path, required=True, help="state directory (pairing, the phone's content)")
    run.add_argument("--day", type=int, default=0, help="which day of the synthetic phone's life to serve")
    run.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="phone size, e.g. 64MB, 2GB")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    serve(args.port, args.data, day=args.day, size=args.size, seed=args.seed)


if __name__ == "__main__":
    main()
