"""Fail unless a pytest JUnit report ran a test tier: at least one test under the tier's folder passed and
none of them was skipped.

CI runs the ComfyUI integration tier in its own pytest run and checks the report with this, so a tier
that skipped (no ComfyUI found, a conftest that gave up) or collected nothing turns CI red instead of
passing quietly.

    python .ci/check_tier.py REPORT.xml tests/comfyui
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter


def tier_outcomes(report_path: str, folder: str) -> Counter:
    """Counts of passed / skipped / failed / error for the test cases whose file lies under ``folder``."""
    prefix = folder.strip("/").replace("/", ".") + "."
    outcomes: Counter = Counter()
    for case in ET.parse(report_path).getroot().iter("testcase"):
        if not case.get("classname", "").startswith(prefix):
            continue
        kinds = {child.tag for child in case}
        if "skipped" in kinds:
            outcomes["skipped"] += 1
        elif "failure" in kinds:
            outcomes["failed"] += 1
        elif "error" in kinds:
            outcomes["error"] += 1
        else:
            outcomes["passed"] += 1
    return outcomes


def problem(outcomes: Counter, folder: str) -> str | None:
    """Why the tier does not count as run, or None."""
    if outcomes["skipped"]:
        return f"{outcomes['skipped']} test(s) under {folder} were skipped: the tier must run in CI"
    if not outcomes["passed"]:
        return f"no test under {folder} passed ({dict(outcomes) or 'none collected'})"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    outcomes = tier_outcomes(argv[1], argv[2])
    reason = problem(outcomes, argv[2])
    if reason:
        print(f"check_tier: FAILED: {reason}", file=sys.stderr)
        return 1
    print(f"check_tier: {argv[2]}: {outcomes['passed']} passed, none skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
