"""Compares two ActivityNet submission files: the same videos, and per video
the same entries (labels and segments equal, scores within a tolerance).
Standard library only.

    python -m export.compare runs/demo/detections.json served.json [--tolerance 1e-5]

Exit status 0 when they agree, 1 when they do not.
"""

import argparse
import json
import sys

SEGMENT_DIGITS = 6  # both sides compute seconds from the same lattice and durations


def compare_results(expected, found, score_tolerance=1e-5):
    """Differences between two {video_id: [entries]} (entries as in a
    submission's "results").

    Per video, entries are matched by (label, segment): both sides must hold
    the same ones, with scores within `score_tolerance`. Their order is not
    compared, as entries whose scores tie to within rounding may come out in
    either order; such swaps are counted apart.

    Returns:
        {"videos": count compared, "entries": count compared,
        "max_score_diff": float, "rank_swaps": entries at another rank,
        "problems": [str]}; no problems means the two agree.
    """
    problems = []
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"{len(missing)} videos missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} unexpected videos, e.g. {extra[:3]}")
    max_score_diff, entries, rank_swaps = 0.0, 0, 0
    for video_id in sorted(set(expected) & set(found)):
        left = _by_key(expected[video_id])
        right = _by_key(found[video_id])
        only_left = sorted(set(left) - set(right))
        only_right = sorted(set(right) - set(left))
        if only_left or only_right:
            problems.append(
                f"{video_id}: {len(only_left)} entries only in the first file "
                f"(e.g. {only_left[:1]}), {len(only_right)} only in the second "
                f"(e.g. {only_right[:1]})"
            )
        for key in sorted(set(left) & set(right)):
            (rank_a, score_a), (rank_b, score_b) = left[key], right[key]
            entries += 1
            rank_swaps += rank_a != rank_b
            diff = abs(score_a - score_b)
            max_score_diff = max(max_score_diff, diff)
            if diff > score_tolerance:
                problems.append(f"{video_id} {key}: score {score_a} vs {score_b}")
    return {
        "videos": len(set(expected) & set(found)),
        "entries": entries,
        "max_score_diff": max_score_diff,
        "rank_swaps": rank_swaps,
        "problems": problems,
    }


def _by_key(entries):
    """{(label, start, end): (rank, score)}; segments rounded far below a frame."""
    keyed = {}
    for rank, entry in enumerate(entries):
        start, end = (round(float(value), SEGMENT_DIGITS) for value in entry["segment"])
        key = (entry.get("label"), start, end)
        if key in keyed:
            key = (*key, rank)  # a duplicate (soft-NMS can keep one): keep both
        keyed[key] = (rank, float(entry["score"]))
    return keyed


def compare_files(expected_path, found_path, score_tolerance=1e-5):
    """`compare_results` of the "results" of two submission files."""
    results = []
    for path in (expected_path, found_path):
        with open(path) as stream:
            results.append(json.load(stream)["results"])
    return compare_results(*results, score_tolerance=score_tolerance)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m export.compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("expected", help="Submission JSON, e.g. evaluate.py's.")
    parser.add_argument("found", help="Submission JSON, e.g. export.serve's.")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="On scores.")
    args = parser.parse_args(argv)
    report = compare_files(args.expected, args.found, args.tolerance)
    for problem in report["problems"][:20]:
        print(problem)
    verdict = "SAME" if not report["problems"] else "DIFFERENT"
    print(
        f"{verdict}: {report['videos']} videos, {report['entries']} entries, max "
        f"score difference {report['max_score_diff']:.2e} (tolerance "
        f"{args.tolerance:g}), {report['rank_swaps']} entries swapped with a "
        f"near-tie, {len(report['problems'])} problems"
    )
    return 0 if not report["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
