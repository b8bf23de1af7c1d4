"""The `freedom status`, `freedom dlq list|show|replay|purge` and `freedom offsets reset` subcommands:
argument parsing and printing only; the work is done by the functions of :mod:`freedom.ops`
(a library: this thin command line is its only user outside the console).

A user mistake (unknown topic, a bad filter, a group in use) is one line on stderr and exit 2
(raised as OpsError, printed by `freedom`'s main).

Everything printed follows the rule of :func:`freedom.wire.encoding.printable` (docs/operations.md,
"Control and bidirectional characters"): each text read from a record or reported by a broker
goes through `printable`, every output line through `escape_controls`, and `--json` is written by
`printable_json`, so no control or bidirectional character reaches the terminal raw.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING

from freedom.cli.ops_common import common as _common
from freedom.cli.ops_common import filter_of as _filter
from freedom.cli.ops_common import filters as _filters
from freedom.cli.ops_common import print_json as _json
from freedom.cli.ops_common import print_lines as _print
from freedom.cli.ops_common import table as _table
from freedom.cli.ops_common import target as _target
from freedom.cli.purge import add_parser as add_purge_parser
from freedom.cli.purge import command as purge_command
from freedom.ops.target import OpsError
from freedom.wire.encoding import printable

if TYPE_CHECKING:
    from freedom.ops.status import PartitionStatus

COMMANDS = ("status", "dlq", "offsets")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `status`, `dlq` and `offsets` to the `freedom` command."""
    st = sub.add_parser(
        "status", help="consumer groups, lag, retries waiting and dead letters of the service"
    )
    _common(st, positional_app=True)

    dlq = sub.add_parser(
        "dlq",
        help="dead letters: list (by error), show (records), replay (back to their topics), purge",
    )
    dsub = dlq.add_subparsers(dest="dlq_command", required=True)
    ls = dsub.add_parser("list", help="dead letters grouped by error class, with counts and times")
    _filters(ls)
    _common(ls)
    show = dsub.add_parser("show", help="print dead letters: headers, value preview, trace id")
    _filters(show)
    show.add_argument(
        "--limit", type=int, default=20, help="at most this many records (default 20)"
    )
    _common(show)
    rp = dsub.add_parser(
        "replay", help="redrive dead letters to their original topics, exactly once"
    )
    _filters(rp)
    rp.add_argument("--dry-run", action="store_true", help="say what would move; move nothing")
    rp.add_argument("--rate", metavar="N/s", help="at most N records per second")
    rp.add_argument(
        "--max-replays",
        type=int,
        default=3,
        metavar="N",
        help="park (do not replay) a record replayed N times already (default 3)",
    )
    _common(rp)
    add_purge_parser(dsub)

    off = sub.add_parser("offsets", help="consumer group offsets")
    osub = off.add_subparsers(dest="offsets_command", required=True)
    reset = osub.add_parser(
        "reset", help="set a stopped group's offsets to earliest, latest or a time"
    )
    reset.add_argument("--group", required=True, help="the consumer group (e.g. the retry group)")
    reset.add_argument(
        "--to", required=True, metavar="WHERE", help="earliest, latest, or an ISO 8601 time"
    )
    reset.add_argument(
        "--topic", help="only this topic (default: every topic the group has offsets on)"
    )
    reset.add_argument(
        "--dry-run", action="store_true", help="show the new offsets; change nothing"
    )
    _common(reset)


# ----------------------------------------------------------------------------- commands


def _status(args: argparse.Namespace) -> int:
    from freedom.ops.status import status

    report = status(_target(args))
    if args.json:
        _json(report)
        return 0
    out = [f"freedom status at {report.at}"]
    for c in report.clients:
        out.append(
            f"consumer client {c.index} ({c.servers}): topics {', '.join(c.topics) or '(none found)'}"
        )
        for g in c.groups:
            n = len(g.members)
            who = "; ".join(
                f"{printable(m.client_id) or '?'} on {printable(m.host.lstrip('/')) or '?'}"
                for m in g.members
            )
            out.append(
                f"  group {printable(g.group)} ({g.kind}, {printable(g.state)}, {n} member{'' if n == 1 else 's'}"
                f"{': ' + who if who else ''}), lag {g.lag}"
            )
            if g.configs:
                out.append(
                    "    configs: " + ", ".join(f"{k}={printable(v)}" for k, v in g.configs.items())
                )
            if g.note:
                out.append(f"    note: {printable(g.note)}")
            if g.kind == "share" and g.partitions:
                out += _table(_share_rows(g.partitions))
            elif g.partitions:
                rows = [["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", ""]]
                for p in g.partitions:
                    rows.append(
                        [
                            p.topic,
                            str(p.partition),
                            "-" if p.committed is None else str(p.committed),
                            str(p.end),
                            str(p.lag),
                            f"paused: next retry due {p.due_at}" if p.due_at else "",
                        ]
                    )
                out += _table(rows)
        if c.retry_waiting:
            out.append(
                "  waiting for a retry: "
                + ", ".join(f"{t.topic} {t.records}" for t in c.retry_waiting)
            )
        if c.other_share_groups:
            out.append(
                "  other share groups on this cluster: "
                + ", ".join(f"{printable(g)} ({printable(st)})" for g, st in c.other_share_groups)
            )
        out.append(
            "  dead letters: "
            + (
                ", ".join(
                    f"{t.topic} {t.records} ({t.not_replayed} not replayed)" for t in c.dead_letters
                )
                or "none"
            )
        )
    _print(out)
    return 0


def share_lag(p: PartitionStatus) -> str:
    """A share group's lag: the broker's count, `~N` estimated, `?` not known."""
    return {"estimate": f"~{p.lag}", "unknown": "?"}.get(p.lag_source, str(p.lag))


def _share_rows(parts: tuple[PartitionStatus, ...]) -> list[list[str]]:
    rows = [["TOPIC", "PARTITION", "START", "END", "SHARE START", "LAG"]]
    for p in parts:
        rows.append(
            [
                printable(p.topic),
                str(p.partition),
                "-" if p.start is None else str(p.start),
                str(p.end),
                "-" if p.share_start is None else str(p.share_start),
                share_lag(p),
            ]
        )
    return rows


def _dlq_list(args: argparse.Namespace) -> int:
    from freedom.ops.dlq import list_dead_letters

    topics = list_dead_letters(_target(args), args.topic, _filter(args))
    if args.json:
        _json([dataclasses.asdict(t) for t in topics])
        return 0
    out = []
    for t in topics:
        out.append(
            f"{t.topic}: {t.records} dead letter{'' if t.records == 1 else 's'}"
            + (f" ({t.purged} purged: not listed)" if t.purged else "")
        )
        if t.classes:
            rows = [["COUNT", "STATUS", "ORIGINAL TOPIC", "FIRST", "LAST", "ERROR"]]
            for c in t.classes:
                rows.append(
                    [
                        str(c.count),
                        "-" if c.status is None else str(c.status),
                        printable(c.original_topic) if c.original_topic else "-",
                        c.first or "-",
                        c.last or "-",
                        printable(c.error_class),
                    ]
                )
            widths = [max(len(r[i]) for r in rows) for i in range(6)]
            out += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    _print(out or ["no dead-letter topics"])
    return 0


def _dlq_show(args: argparse.Namespace) -> int:
    from freedom.ops.dlq import show_dead_letters

    records = show_dead_letters(_target(args), args.topic, _filter(args), args.limit)
    if args.json:
        _json([dataclasses.asdict(d) for d in records])
        return 0
    out = []
    for d in records:
        out.append(
            f"{d.topic}[{d.partition}]@{d.offset}  key {d.key if d.key is not None else '(none)'}  "
            f"dead-lettered {d.timestamp or '-'}"
        )
        out.append(
            f"  from {printable(d.original_topic) if d.original_topic else '?'}"
            f"[{'?' if d.original_partition is None else d.original_partition}]"
            f"@{'?' if d.original_offset is None else d.original_offset}, first failure "
            f"{printable(d.first_failure_time) if d.first_failure_time else '-'}, retries {d.retry_count if d.retry_count is not None else '-'}, "
            f"replays {d.replay_count}, trace {d.trace_id or '-'}"
        )
        out.append(
            f"  error: {printable(d.error) if d.error else '-'}"
            + (f" (status {d.status})" if d.status is not None else "")
        )
        for k, v in d.headers:
            out.append(f"  header {k}: {v}")
        more = (
            f" ... ({d.value_size} bytes)" if d.value_size > len(d.value_preview.encode()) else ""
        )
        out.append(
            f"  value: {d.value_preview}{more}"
            + (" [value left out of the copy]" if d.value_omitted else "")
        )
    _print(out or ["no dead letters match"])
    return 0


def _dlq_replay(args: argparse.Namespace) -> int:
    from freedom.ops.replay import Progress, audit_line, parse_rate, replay

    if args.max_replays < 1:
        raise OpsError("--max-replays must be 1 or more")
    rate = parse_rate(args.rate) if args.rate else None
    flt = _filter(args)
    target = _target(args)

    def progress(p: Progress) -> None:
        print(
            f"  {p.topic}: read {p.read} of {p.total}, moved {p.moved}, parked {p.parked}",
            file=sys.stderr,
            flush=True,
        )

    try:
        report = replay(
            target,
            args.topic,
            flt,
            dry_run=args.dry_run,
            rate=rate,
            max_replays=args.max_replays,
            progress=None if args.json else progress,
        )
    except KeyboardInterrupt:
        print(
            "freedom: interrupted: what was committed stays replayed; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    if args.json:
        _json(report)
        return 0
    out = []
    for t in report.topics:
        verb = "would move" if report.dry_run else "moved"
        to = ", ".join(f"{n} to {topic}" for topic, n in sorted(t.destinations.items()))
        out.append(
            f"{t.topic} (job {t.job}): {verb} {t.moved}{' (' + to + ')' if to else ''}, "
            f"parked {t.parked_count}, not matching {t.skipped}"
            + (f", already purged {t.purged}" if t.purged else "")
        )
        if report.dry_run:
            for m in t.moves[:50]:
                out.append(
                    f"  would move {t.topic}[{m.partition}]@{m.offset} key {m.key} -> "
                    f"{printable(m.to_topic)} (replay {m.replay_count}; {printable(m.error_class)})"
                )
            if t.moved > 50:
                out.append(f"  ... and {t.moved - 50} more")
        for pk in t.parked[:50]:
            out.append(f"  parked {t.topic}[{pk.partition}]@{pk.offset} key {pk.key}: {pk.reason}")
        if t.parked_count > 50:
            out.append(f"  ... and {t.parked_count - 50} more parked")
    if not report.topics:
        out.append("no dead-letter topics")
    if report.note:
        out.append(f"note: {report.note}")
    out.append(f"audit: {audit_line(report)}")
    _print(out)
    return 0


def _offsets_reset(args: argparse.Namespace) -> int:
    from freedom.ops.reset import audit_line, reset_offsets

    result = reset_offsets(_target(args), args.group, args.to, args.topic, dry_run=args.dry_run)
    if args.json:
        _json(result)
        return 0
    out = [
        f"group {result.group} to {result.to}"
        + (" (dry run: nothing changed)" if result.dry_run else ":")
    ]
    rows = [["TOPIC", "PARTITION", "OLD", "NEW"]]
    rows += [
        [c.topic, str(c.partition), "-" if c.old is None else str(c.old), str(c.new)]
        for c in result.changes
    ]
    out += _table(rows, "  ")
    if result.dry_run and result.refusal:
        out.append(f"note: the reset itself would be refused: {result.refusal}")
    elif result.dry_run:
        out.append("note: the group has no live member: the reset itself would be applied")
    out.append(f"audit: {audit_line(result)}")
    _print(out)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the parsed `status`, `dlq ...` or `offsets ...` command; its exit status."""
    if args.command == "status":
        return _status(args)
    if args.command == "dlq":
        return {
            "list": _dlq_list,
            "show": _dlq_show,
            "replay": _dlq_replay,
            "purge": purge_command,
        }[args.dlq_command](args)
    return _offsets_reset(args)
