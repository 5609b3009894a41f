"""`python -m fastwavenet` and the `fastwavenet` command. The CLI's imports (torch, numba: a second or more) run inside
the handling of Ctrl-C, so an interrupt during them ends like any other: one line and exit 130, not a traceback."""

import sys


def run() -> int:
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("fastwavenet: interrupted", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
