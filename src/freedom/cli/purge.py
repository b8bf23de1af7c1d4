"""`freedom dlq purge`: argument parsing and printing; the work is :func:`freedom.ops.purge.purge`
(docs/operations.md, "freedom dlq purge"). Printed by the rule of freedom/cli/ops.py.
"""

from __future__ import annotations

import argparse
import sys

from freedom.cli.ops_common import common, filter_of, filters, print_json, print_lines, target
from freedom.wire.encoding import printable

SHOWN = 50  # records listed per topic (the counts are complete)


def add_parser(dsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `purge` to `freedom dlq`."""
    p = dsub.add_parser(
        "purge",
        help="move past dead letters without replaying them (they no longer wait), exactly once",
    )
    filters(p)
    p.add_argument("--dry-run", action="store_true", help="say what would be purged; purge nothing")
    common(p)


def command(args: argparse.Namespace) -> int:
    """Run `freedom dlq purge`; its exit status."""
    from freedom.ops.purge import PurgeProgress, audit_line, purge

    flt = filter_of(args)
    tgt = target(args)

    def progress(p: PurgeProgress) -> None:
        print(
            f"  {p.topic}: read {p.read} of {p.total}, purged {p.purged}",
            file=sys.stderr,
            flush=True,
        )

    try:
        report = purge(
            tgt,
            args.topic,
            flt,
            dry_run=args.dry_run,
            progress=None if args.json else progress,
        )
    except KeyboardInterrupt:
        print(
            "freedom: interrupted: what was committed stays purged; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    if args.json:
        print_json(report)
        return 0
    verb = "would purge" if report.dry_run else "purged"
    out = []
    for t in report.topics:
        out.append(
            f"{t.topic} (job {t.job}): {verb} {t.purged}, already purged {t.already}, "
            f"not matching {t.skipped}"
        )
        for r in t.records[:SHOWN]:
            out.append(
                f"  {verb} {t.topic}[{r.partition}]@{r.offset} key {r.key} "
                f"(from {printable(r.original_topic) if r.original_topic else '?'}; "
                f"{printable(r.error_class)})"
            )
        if t.purged > SHOWN:
            out.append(f"  ... and {t.purged - SHOWN} more")
    if not report.topics:
        out.append("no dead-letter topics")
    out.append(f"audit: {audit_line(report)}")
    print_lines(out)
    return 0
