#!/usr/bin/env python
"""Render the README's family list and the table of docs/families.md from the family table (hf_vae/families.py).

    python scripts/render_family_docs.py           # rewrite the tables in place
    python scripts/render_family_docs.py --check   # exit 1 and name the documents that are out of date
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a document is out of date")
    args = parser.parse_args(argv)
    from hf_vae.integrations.family_docs import DOCUMENTS, render_into

    stale = []
    for relative, kind in DOCUMENTS.items():
        path = os.path.join(ROOT, relative)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        rendered = render_into(text, kind)
        if rendered == text:
            continue
        stale.append(relative)
        if not args.check:
            with open(path, "w", encoding="utf-8") as f:
                f.write(rendered)
    if args.check and stale:
        print(f"Out of date: {', '.join(stale)}; run python scripts/render_family_docs.py", file=sys.stderr)
        return 1
    print(f"{'rewrote' if stale else 'up to date'}: {', '.join(stale) or ', '.join(DOCUMENTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
