"""`python -m snapledger.adapters.cli.manpage DIR`: the man pages, snapledger.1 and
snapledger-COMMAND.1 for every command, written into DIR from the click commands themselves
(click-man; docs/cli.md, "Reference"). click-man comes with the `test` extra."""

from __future__ import annotations

import sys
from pathlib import Path

from snapledger.adapters.cli import output
from snapledger.adapters.cli.main import cli
from snapledger.adapters.version import VERSION


def write_pages(directory: Path) -> list[Path]:
    """Every page, written into `directory` (made if missing); the paths written."""
    from click_man.core import write_man_pages  # type: ignore[import-untyped]

    directory.mkdir(parents=True, exist_ok=True)
    write_man_pages("snapledger", cli, version=VERSION, target_dir=str(directory))
    return sorted(directory.glob("snapledger*.1"))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        output.error("usage: python -m snapledger.adapters.cli.manpage DIR")
        return 2
    try:
        pages = write_pages(Path(args[0]))
    except ImportError:
        output.error("the man pages are made by click-man: pip install click-man "
                     "(or pip install 'snapledger[test]')")
        return 1
    except OSError as error:
        output.error(f"can't write the man pages into {args[0]}: {error.strerror}")
        return 1
    output.say(f"{len(pages)} man pages in {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
