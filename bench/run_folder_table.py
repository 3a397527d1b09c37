"""The command line of the bench scripts that read train.py run folders back
and print one markdown table over them (fit_diagnosis, pattern_ceiling)."""

import argparse

from tal_keras import atomic


def print_run_folder_table(description, table_rows, argv=None):
    """Parses `RUN_FOLDER [RUN_FOLDER ...] [--out FILE]`, prints each table
    row as it is made, then the whole table (also written to --out).

    Args:
        description: the script's one-line description.
        table_rows: run folder -> iterable of rows, each a dict {column
            title: cell text}; the first row's titles make the header.
        argv: the arguments (None: the command line's).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run_folders", nargs="+")
    parser.add_argument("--out", default="", help="also write the table here")
    args = parser.parse_args(argv)
    lines = []
    for run_folder in args.run_folders:
        for row in table_rows(run_folder):
            if not lines:
                lines.append("| " + " | ".join(row) + " |")
                lines.append("|" + " --- |" * len(row))
            lines.append("| " + " | ".join(row.values()) + " |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if args.out:
        atomic.write_text_atomic(args.out, text)
