"""The docs stay true to the tree: the flag table in docs/flags.md is what
`python -m tal_keras.flag_table` prints from the flag definitions, every file
the tree cites exists, README keeps its two commands within 250 lines, and no
tracked text talks about how the project was developed instead of about the
software (git log keeps that)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tal_keras import flag_table

ROOT = Path(__file__).resolve().parent.parent

TEXT_SUFFIXES = (".md", ".py", ".flags", ".txt", ".toml", ".cfg", ".sh")

# Phrases that tell the project's history (rounds of work, tickets and their
# items, what was tried first) rather than describe the software. A "session"
# of onnxruntime or a pytest fixture's scope is software and does not match.
HISTORY_PHRASES = (
    r"\bsessions? \d",
    r"\bsession-\d",
    r"\b(this|that|last|next|previous|earlier|later|current) session\b",
    r"\bawait(s|ing)? (a) session\b",
    r"\bsession's end\b",
    r"\bissues? #?\d",
    r"\bthe (issue)('s)?\b",
    r"\bitems? \d+ (asks|also|lists|of the)\b",
    r"\bitems? \d+'s\b",
    r"\(items? \d+\)",
    r"\bverdict on item\b",
    r"\brounds? of (work|development|review)\b",
    r"\btickets? #?\d",
    r"\bwhat was tried first\b",
    r"\b(lead|engineer), end of\b",
)
HISTORY = re.compile("|".join(HISTORY_PHRASES), re.IGNORECASE)

THIS_FILE = Path(__file__).resolve().relative_to(ROOT).as_posix()

README_COMMANDS = (
    "pip install -r requirements.txt && python train.py --flagfile=demo.flags",
    "pip install -r requirements-dev.txt && python -m pytest -q",
)


def tracked_text_files():
    """Paths (relative to the repository) of the tracked text files."""
    try:
        listing = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [
        path
        for path in listing
        if (path.endswith(TEXT_SUFFIXES) or path.startswith(".ci/"))
        and (ROOT / path).is_file()
    ]


def history_hits(lines):
    """(line number, line) of each line that tells the project's history."""
    return [
        (number, line)
        for number, line in enumerate(lines, start=1)
        if HISTORY.search(line)
    ]


def test_the_flag_table_in_docs_is_what_the_command_prints():
    printed = subprocess.run(
        [sys.executable, "-m", "tal_keras.flag_table"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    in_docs = flag_table.table_in_page((ROOT / "docs" / "flags.md").read_text())
    assert in_docs == printed, (
        "docs/flags.md's flag table differs from the flag definitions: run "
        "`python -m tal_keras.flag_table --write`"
    )


def test_the_flag_table_has_a_row_per_flag_with_its_default():
    from absl import flags

    import tal_keras.flags  # noqa: F401

    table = flag_table.flag_table()
    rows = table.splitlines()[2:]
    defined = flags.FLAGS.get_flags_for_module("tal_keras.flags")
    assert [row.split("`")[1] for row in rows] == [f"--{f.name}" for f in defined]
    assert "| `--num_clips` | `256` |" in table
    assert "| `--scale_layers` | `64,32,32` |" in table
    assert '| `--category_file` | `""` |' in table
    # An enum's help names its values as <a|b>: escaped, or the row splits.
    map_row = next(row for row in rows if row.startswith("| `--map_mode`"))
    assert map_row.count(" | ") == 2 and "\\|" in map_row


def test_page_with_table_replaces_only_the_text_between_the_markers():
    page = f"# Flags\n\nbefore\n{flag_table.BEGIN}\nold\n{flag_table.END}\nafter\n"
    new = flag_table.page_with_table(page, "| a |\n")
    assert (
        new
        == f"# Flags\n\nbefore\n{flag_table.BEGIN}\n| a |\n{flag_table.END}\nafter\n"
    )
    assert flag_table.table_in_page(new) == "| a |\n"
    with pytest.raises(ValueError, match="markers"):
        flag_table.page_with_table("no markers", "| a |\n")


def test_the_history_pattern_finds_history_and_spares_software_sessions():
    # Built from pieces, so that this file itself holds no such phrase.
    session, issue, item = "Sess" + "ion", "iss" + "ue", "it" + "em"
    history = [
        f"Where it stands ({session.lower()} 7; percent)",
        f"{session} 5: body prototypes",
        f'docs/benchmarks.md, "{session} 6"',
        f"{session.lower()}s 3 to 6",
        f"this {session.lower()}",
        f"await a {session.lower()} with a GPU",
        f"(lead, end of {session.lower()} 2)",
        f"the {issue}'s targets",
        f"({issue} 9)",
        f"Verdict on {item} 3",
        f"{item.capitalize()} 3 asks for one recipe",
        "one " + "round of work",
    ]
    software = [
        "session = onnxruntime.InferenceSession(path)",
        f"uses it only when a {session.lower()} really gets it",
        f"added to the {session.lower()}'s 640 MiB",
        '@pytest.fixture(scope="session")',
        f"made once per test {session.lower()}",
        "sess.run(None, feeds)",
        "is tried first and, since NaN < t",
        "the first item of the batch",
    ]
    assert [HISTORY.search(line) is not None for line in history] == [True] * len(
        history
    )
    assert [line for line in software if HISTORY.search(line)] == []


def test_no_tracked_text_tells_the_projects_history():
    hits = []
    for path in tracked_text_files():
        if path == THIS_FILE:  # its examples are phrases the scan must find
            continue
        lines = (ROOT / path).read_text(errors="replace").splitlines()
        hits += [
            f"{path}:{number}: {line.strip()}" for number, line in history_hits(lines)
        ]
    assert not hits, (
        "docs and code describe the software; the history of its making "
        "belongs in git log:\n" + "\n".join(hits)
    )


# A cited file: a path under one of the repository's top folders, or an
# upper-case markdown name (README.md, STYLE.md) on its own.
TOP_FOLDERS = ("tal_keras", "docs", "export", "bench", "tests", ".ci")
CITED_PATH = re.compile(
    r"(?<![\w/.-])((?:" + "|".join(re.escape(top) for top in TOP_FOLDERS) + r")"
    r"/(?:[\w.-]+/)*[\w-]+\.(?:md|py|flags|png|txt|toml))\b"
    r"|(?<![\w/.-])([A-Z][A-Z0-9_]{2,}\.md)\b"
)
MARKDOWN_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def cited_files(path, text):
    """Files that the text of tracked file `path` cites: paths from the
    repository's top folders, upper-case markdown names, and (markdown)
    link targets, as (cited text, candidate paths any of which may exist)."""
    folder = (ROOT / path).parent
    cited = []
    for match in CITED_PATH.finditer(text):
        name = match.group(1) or match.group(2)
        cited.append((name, [ROOT / name, folder / name]))
    if path.endswith(".md"):
        for match in MARKDOWN_LINK.finditer(text):
            target = match.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue
            cited.append((target, [folder / target]))
    return cited


def test_every_cited_file_is_in_the_repository():
    missing = []
    for path in tracked_text_files():
        if path == THIS_FILE:  # its examples cite files that do not exist
            continue
        text = (ROOT / path).read_text(errors="replace")
        for name, candidates in cited_files(path, text):
            if not any(candidate.exists() for candidate in candidates):
                missing.append(f"{path}: {name}")
    assert not missing, "cited but not in the repository:\n" + "\n".join(
        sorted(set(missing))
    )


def test_cited_files_finds_paths_and_links():
    text = (
        "see docs/design.md, STYLE.md and [the plot](demo_ar_an.png); "
        "python bench/table1.py --out table1.md; [web](https://example.com)"
    )
    names = [name for name, _ in cited_files("docs/x.md", text)]
    assert names == ["docs/design.md", "STYLE.md", "bench/table1.py", "demo_ar_an.png"]


def test_readme_is_a_short_door_with_the_two_commands_after_its_intro():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines"
    assert lines[0].startswith("# ")
    text = "\n".join(lines)
    positions = [text.find(command) for command in README_COMMANDS]
    assert all(position > 0 for position in positions), positions
    # The commands come right after the intro paragraph, before any section.
    assert text.find("\n## ") > max(positions)


def test_the_departures_table_in_design_md_is_the_recipe_tables():
    from tal_keras import recipes

    text = (ROOT / "docs" / "design.md").read_text()
    begin = text.index("<!-- departures:begin")
    begin = text.index("\n", begin) + 1
    end = text.index("<!-- departures:end -->")
    assert text[begin:end] == recipes.departures_markdown(), (
        "docs/design.md's departures table differs from tal_keras/recipes.py: "
        "paste `python -m tal_keras.recipes` between its markers"
    )


# Pages that describe the software as it is (docs/benchmarks.md names the
# flags of the commit each measurement ran at). Flags of other programs than
# train.py and evaluate.py are found in their argparse definitions; these
# are neither.
CURRENT_PAGES = ("README.md", "docs/design.md", "docs/faults.md", "docs/performance.md")
OTHER_FLAGS = {"flagfile", "helpfull", "xla_gpu_autotune_level"}


def test_every_flag_the_pages_name_is_defined():
    from absl import flags

    import tal_keras.flags  # noqa: F401

    defined = {
        flag.name for flag in flags.FLAGS.get_flags_for_module("tal_keras.flags")
    }
    sources = "\n".join(
        (ROOT / path).read_text(errors="replace")
        for path in tracked_text_files()
        if path.endswith(".py") and not path.startswith("tests/")
    )
    unknown = []
    for page in CURRENT_PAGES:
        named = re.findall(r"(?<![\w-])--([a-z][a-z0-9_-]*)", (ROOT / page).read_text())
        for name in sorted(set(named)):
            absl_name = name.removeprefix("no-")
            if absl_name in defined or name in OTHER_FLAGS:
                continue
            if f'"--{name}"' not in sources and f"'--{name}'" not in sources:
                unknown.append(f"{page}: --{name}")
    assert not unknown, "flags named but defined nowhere:\n" + "\n".join(unknown)
