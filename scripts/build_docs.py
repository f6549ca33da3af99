"""Put the node help pages (web/docs/<node id>.md, what the front end shows) into README.md's node reference.

    python scripts/build_docs.py          # rewrite the section between the markers in README.md
    python scripts/build_docs.py --check  # exit 1 when README.md is out of date (tests/test_docs.py runs this)

The pages are the one source: README.md repeats them with their headings moved down two levels.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = REPO / "web" / "docs"
README = REPO / "README.md"
BEGIN, END = (
    "<!-- node reference: generated from web/docs by scripts/build_docs.py -->",
    "<!-- end of node reference -->",
)
ORDER = [  # the order a graph uses them in
    "XAttnObjectPrompt",
    "XAttnInvertImage",
    "XAttnCrossImageSampler",
    "XAttnOptions",
    "XAttnSelectInversion",
    "XAttnSaveInversion",
    "XAttnLoadInversion",
    "XAttnAdaINLatentMatch",
]


def node_reference() -> str:
    """Every page, its headings two levels down (a page's # title becomes ###)."""
    sections = []
    for node_id in ORDER:
        text = (PAGES / f"{node_id}.md").read_text().strip()
        sections.append(re.sub(r"^(#+) ", lambda match: "##" + match.group(1) + " ", text, flags=re.M))
    return "\n\n".join(sections)


def updated_readme() -> str:
    readme = README.read_text()
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[:start] + "\n\n" + node_reference() + "\n\n" + readme[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when README.md is stale")
    args = parser.parse_args()
    text = updated_readme()
    if args.check:
        stale = README.read_text() != text
        print(f"README.md node reference is {'STALE: run python scripts/build_docs.py' if stale else 'up to date'}")
        return 1 if stale else 0
    README.write_text(text)
    print("wrote the node reference into README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
