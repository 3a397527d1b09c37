"""The flags of train.py and evaluate.py as a markdown table, made from their
definitions in `tal_keras/flags.py` (docs/flags.md holds a copy between
marker comments; tests/test_docs.py fails when it differs).

    python -m tal_keras.flag_table            # print the table
    python -m tal_keras.flag_table --write    # rewrite docs/flags.md's copy
"""

import sys
from pathlib import Path

from tal_keras.atomic import write_text_atomic

FLAGS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "flags.md"
BEGIN = "<!-- flag-table:begin (python -m tal_keras.flag_table --write) -->"
END = "<!-- flag-table:end -->"


def _cell(text):
    return text.replace("|", "\\|").replace("\n", " ")


def _default(flag):
    value = flag.default
    if isinstance(value, bool):
        value = "true" if value else "false"
    if isinstance(value, (list, tuple)):
        value = ",".join(str(item) for item in value)
    value = str(value)
    return f"`{value}`" if value else '`""`'


def flag_table():
    """The markdown table (flag, default, meaning) of every flag defined in
    `tal_keras/flags.py`, in definition order; an alias is one row naming
    the flag it stands for."""
    from absl import flags

    import tal_keras.flags  # noqa: F401  (defines the flags)

    rows = ["| flag | default | meaning |", "| --- | --- | --- |"]
    for flag in flags.FLAGS.get_flags_for_module("tal_keras.flags"):
        if type(flag).__name__ == "_FlagAlias":
            rows.append(f"| `--{flag.name}` | | {_cell(flag.help)} |")
            continue
        rows.append(f"| `--{flag.name}` | {_default(flag)} | {_cell(flag.help)} |")
    return "\n".join(rows) + "\n"


def page_with_table(page_text, table):
    """`page_text` with the text between the flag-table markers replaced by
    `table`.

    Raises:
        ValueError: the page lacks one of the markers.
    """
    start = page_text.find(BEGIN)
    end = page_text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{FLAGS_PAGE}: expected the markers {BEGIN!r} and {END!r}.")
    return page_text[: start + len(BEGIN)] + "\n" + table + page_text[end:]


def table_in_page(page_text):
    """The text between the flag-table markers of `page_text` (as
    `page_with_table` writes it)."""
    start = page_text.find(BEGIN)
    end = page_text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{FLAGS_PAGE}: expected the markers {BEGIN!r} and {END!r}.")
    return page_text[start + len(BEGIN) + 1 : end]


def main(argv):
    table = flag_table()
    if "--write" in argv[1:]:
        write_text_atomic(FLAGS_PAGE, page_with_table(FLAGS_PAGE.read_text(), table))
        print(f"wrote the flag table into {FLAGS_PAGE}")
    else:
        sys.stdout.write(table)


if __name__ == "__main__":
    main(sys.argv)
