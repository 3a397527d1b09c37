"""The named recipes: `paper`, the report's settings (the config classes'
defaults), and `tuned`, the departures from it that measured better on the
demo and on the six independent benchmark datasets (docs/benchmarks.md).

`--recipe=NAME` starts every config field at the recipe's value; a field's
own flag overrides it. This table is the one list of the departures: the
docs' table (docs/design.md) is `departures_markdown()`'s output, and the
tests check the flagfiles against it.

    python -m tal_keras.recipes     # prints the departures as a markdown table
"""

import dataclasses

from tal_keras.config import SECTIONS


@dataclasses.dataclass(frozen=True)
class Departure:
    """One config field set away from the report.

    Attributes:
        section: the config section ("model", "train", "eval").
        field: the field, named as its flag.
        value: its value in the recipe.
        what: what it does, one line.
    """

    section: str
    field: str
    value: object
    what: str

    @property
    def paper_value(self):
        """The report's value: the config class's default."""
        return SECTIONS[self.section].__dataclass_fields__[self.field].default


TUNED = (
    Departure(
        "model",
        "clip_normalization",
        "video",
        "each input channel standardised over the video's clips",
    ),
    Departure(
        "model",
        "clip_context",
        3,
        "a temporal conv over 3 clips in the clip encoder, before pooling",
    ),
    Departure(
        "model",
        "boundary_features",
        True,
        "projections of each proposal's start and end clip added to its pooled feature",
    ),
    Departure(
        "model",
        "overlap_cell_bias",
        True,
        "a learned bias per proposal on the overlap logit, started at the "
        "training videos' length prior",
    ),
    Departure(
        "train",
        "overlap_positive_weight",
        10.0,
        "each proposal's overlap loss weighted by 1 + 9 x its target",
    ),
    Departure(
        "model",
        "class_mean_evidence",
        64,
        "the class-mean evidence of each proposal (a weighted sum and an MLP "
        "of 64 units) added to its overlap logit",
    ),
    Departure(
        "model",
        "class_mean_logits",
        True,
        "per-class logits by the class-mean start, end and body matches "
        "added to the classifier's",
    ),
    Departure(
        "eval",
        "proposal_soft_nms_sigma",
        2.0,
        "proposals through Gaussian soft-NMS of width 2 instead of NMS at tIoU "
        "0.5 (the content-blind baseline too)",
    ),
    Departure(
        "eval",
        "soft_nms",
        True,
        "detections through Gaussian soft-NMS instead of NMS",
    ),
    Departure(
        "eval",
        "nms_threshold",
        0.1,
        "the detections' soft-NMS decays overlaps above tIoU 0.1",
    ),
)

RECIPES = {"paper": (), "tuned": TUNED}


def recipe_values(name):
    """{(section, field): value} of recipe `name`."""
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {name!r}.")
    return {(item.section, item.field): item.value for item in RECIPES[name]}


def departures_markdown(name="tuned"):
    """The departures of recipe `name` as a markdown table."""
    lines = [
        "| flag | paper | " + name + " | what it does |",
        "| --- | --- | --- | --- |",
    ]
    for item in RECIPES[name]:
        lines.append(
            f"| `--{item.field}` | {_shown(item.paper_value)} | "
            f"{_shown(item.value)} | {item.what} |"
        )
    return "\n".join(lines) + "\n"


def _shown(value):
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    print(departures_markdown(), end="")
