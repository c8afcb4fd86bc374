"""The flags the three CLIs share, command by command, read from their parsers (the table in docs/cli.md).

    python bench/flag_table.py

A cell is the flag's default where the command takes it, "-" where it does not; a row whose flag has two defaults
or help texts across commands is listed under it, so a drift between CLIs shows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classify.__main__ import build_parser as classify_parser  # noqa: E402
from extract.__main__ import build_parser as extract_parser  # noqa: E402
from pipelines.__main__ import build_parser as pipelines_parser  # noqa: E402

SHARED = ("--layers", "--image-size", "--limit-per-class", "--batch-size", "--workers", "--device", "--precision",
          "--seed", "--cv", "--n-jobs", "--json", "--skip-bad", "--cache-dir", "--flip")


def commands() -> dict[str, argparse.ArgumentParser]:
    found = {"extract": extract_parser()}
    for prefix, parser in (("classify", classify_parser()), ("pipelines", pipelines_parser())):
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        found.update({f"{prefix} {name}": p for name, p in sub.choices.items()
                      if not (prefix == "classify" and name in ("linearsvm", "knn"))})  # as logreg and svm
    return found


def main() -> None:
    table = commands()
    options = {name: {flag: action for action in parser._actions for flag in action.option_strings}
               for name, parser in table.items()}
    print("| flag | " + " | ".join(table) + " |")
    print("|---|" + "---|" * len(table))
    drift = []
    for flag in SHARED:
        cells, helps = [], set()
        for name in table:
            action = options[name].get(flag)
            if action is None:
                cells.append("-")
                continue
            default = action.default
            cells.append("on/off" if isinstance(action, argparse._StoreTrueAction) else
                         f"{default}" if default not in (None, argparse.SUPPRESS) else "auto")
            helps.add(action.help)
        print(f"| `{flag}` | " + " | ".join(cells) + " |")
        if len(helps) > 1:
            drift.append(flag)
    print(f"\nflags with more than one help text: {', '.join(drift) or 'none'}")


if __name__ == "__main__":
    main()
