"""The one exception type for user mistakes: each CLI prints its message on one line and exits 2."""


class UsageError(Exception):
    """Bad input from the user: an unknown name, a missing file, an unparsable option.

    Anything else raised by the toolkit is a bug and keeps its traceback.
    """


def run_cli(main, argv: list[str] | None = None) -> int:
    """Run a CLI main: a UsageError becomes one line on stderr and exit code 2, Ctrl-C exit code 130."""
    import sys

    try:
        return main(argv) or 0
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: what was written so far is kept; run the same command again to resume",
              file=sys.stderr)
        return 130
