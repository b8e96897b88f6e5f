"""`python -m phonevault.sync.emulator serve --port P --data DIR [--day N] [--size 2GB] [--seed S] [--many-files N]`
or `… write OUT [--day N] [--size 2GB] [--seed S] [--password PW] [--many-files N]` (the synthetic phone's
backup folder after day N, at OUT/<udid>, without serving it)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from phonevault.cli.sizes import parse_size

from .phone import SyntheticPhone
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
    run.add_argument("--many-files", type=int, default=0, metavar="N", help="N small plists instead of the default")
    run.add_argument("-v", "--verbose", action="store_true")
    write = commands.add_parser("write", help="write the synthetic iPhone's backup folder to OUT/<udid>")
    write.add_argument("out", type=Path, help="backup root; the folder is OUT/<udid>")
    write.add_argument("--day", type=int, default=0, help="the folder after this day's backup")
    write.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="phone size, e.g. 64MB, 6GB")
    write.add_argument("--seed", type=int, default=1)
    write.add_argument("--password", default=None, help="make an iOS-encrypted backup")
    write.add_argument("--many-files", type=int, default=0, metavar="N", help="N small plists instead of the default")
    args = parser.parse_args(argv)
    if args.command == "write":
        phone = SyntheticPhone(args.seed, args.size, password=args.password, many_files=args.many_files or False)
        print(phone.write_backup(args.out, args.day))
        return
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    serve(args.port, args.data, day=args.day, size=args.size, seed=args.seed, many_files=args.many_files)


if __name__ == "__main__":
    main()
