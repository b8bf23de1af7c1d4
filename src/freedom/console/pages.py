"""The web console's pages, rendered on the server as plain HTML (no script at all).

Everything shown comes from outside — record keys, headers, values, error texts, topic and group
names — so every value goes through :func:`h` (HTML escaping, quotes too) or :func:`q` (a query
string, then escaped); the pages are also served with a Content-Security-Policy that allows no
script (routes.py), so a value that slipped through would still show as text, not run.

Control and bidirectional characters are shown escaped (`\\x1b`, `\\u202e`), as `freedom dlq`
shows them (docs/operations.md, "Control and bidirectional characters"): texts read from a record
or reported by a broker go through :func:`printable` (:func:`shown` below), and :func:`h` escapes
any such character still left, so a right-to-left override cannot reorder what the page shows.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from urllib.parse import urlencode

from freedom.console.share_pages import other_share_groups, share_group
from freedom.ops.dlq import DeadLetter, TopicDeadLetters
from freedom.ops.replay import ReplayReport, audit_line
from freedom.ops.status import (
    ClientStatus,
    GroupStatus,
    PartitionStatus,
    StatusReport,
    TopicCount,
)
from freedom.wire.encoding import escape_controls, printable

#: The filters of the replay and purge forms (text inputs), in the order shown, with their labels
#: and hints.
FILTER_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("key", "Key", "only the record with this key"),
    ("since", "Since", "ISO 8601, e.g. 2026-12-01T10:00:00Z"),
    ("until", "Until", "ISO 8601"),
    ("grep", "Error contains", "text in the error, or the status"),
    ("partition", "Partition", "of the dead-letter topic"),
    ("offsets", "Offsets", "A-B, A-, -B or N"),
)
#: The replay form's fields: the filters, the rate and the limit.
REPLAY_FIELDS: tuple[tuple[str, str, str], ...] = (
    *FILTER_FIELDS,
    ("rate", "Rate", "records per second, e.g. 50/s"),
    ("max_replays", "Max replays", "park a record replayed this often (default 3)"),
)


def h(value: object) -> str:
    """`value` as HTML text: control and bidirectional characters escaped (`\\u202e`), then `<`,
    `>`, `&` and both quotes."""
    return html.escape(escape_controls("" if value is None else str(value)), quote=True)


def shown(text: str | None, missing: str = "-") -> str:
    """A text read from a record or reported by a broker, by the rule of `freedom dlq`
    (`printable`: the backslash doubled too); `missing` for none."""
    return printable(text) if text else missing


def q(base: str, params: Mapping[str, object]) -> str:
    """A link to `base` with `params` as its query string, escaped for an attribute."""
    query = urlencode({k: str(v) for k, v in params.items() if v is not None and v != ""})
    return h(f"{base}?{query}" if query else base)


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    """A table; `head` is plain text, the cells of `rows` are HTML already escaped."""
    ths = "".join(f"<th>{h(c)}</th>" for c in head)
    trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{h(cls)}"><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table>'


def layout(
    base: str,
    title: str,
    body: str,
    *,
    csrf: str | None = None,
    service: str = "freedom",
    nav: bool = True,
    refresh: int | None = None,
) -> str:
    """A whole page: the navigation (`nav`; with the logout form when logged in with a session) and
    `body`; reloaded by the browser every `refresh` seconds when given (a meta refresh: no script)."""
    links = ""
    if nav:
        logout = (
            f'<form method="post" action="{h(base)}/logout" class="logout">'
            f'<input type="hidden" name="csrf" value="{h(csrf)}"><button>Log out</button></form>'
            if csrf is not None
            else ""
        )
        links = (
            f'<nav><a href="{h(base)}">Groups and lag</a> <a href="{h(base)}/dead-letters">Dead letters</a>'
            f"{logout}</nav>"
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        + (f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else "")
        + f"<title>{h(title)} · {h(service)} console</title>"
        f'<link rel="stylesheet" href="{h(base)}/console.css"></head>'
        f"<body><header><strong>{h(service)}</strong> console</header>{links}"
        f"<main><h1>{h(title)}</h1>{body}</main></body></html>"
    )


def error_box(message: str) -> str:
    return f'<p class="error" role="alert">{h(message)}</p>'


# ----------------------------------------------------------------------------- log in


def login(base: str, next_path: str, problem: str | None = None, service: str = "freedom") -> str:
    body = (error_box(problem) if problem else "") + (
        f'<form method="post" action="{h(base)}/login" class="login">'
        f'<input type="hidden" name="next" value="{h(next_path)}">'
        f'<label>Console token <input type="password" name="token" autocomplete="current-password" '
        f"required autofocus></label><button>Log in</button></form>"
        '<p class="hint">The token is app.toml\'s <code>console_token</code> '
        "(or <code>FREEDOM_APP__CONSOLE_TOKEN</code>).</p>"
    )
    return layout(base, "Log in", body, service=service, nav=False)


# ----------------------------------------------------------------------------- groups and lag


#: The interval the overview's auto-refresh link offers (`?refresh=30`; docs/console.md).
REFRESH_SECONDS = 30


def _partition_rows(parts: Iterable[PartitionStatus]) -> list[list[str]]:
    return [
        [
            h(p.topic),
            h(p.partition),
            h("-" if p.committed is None else p.committed),
            h(p.end),
            h(p.lag),
            h(f"paused: next retry due {p.due_at}" if p.due_at else ""),
        ]
        for p in parts
    ]


_PARTITION_HEAD = ["Topic", "Partition", "Committed", "End", "Lag", ""]


def _group(g: GroupStatus) -> str:
    """A group: its heading and members, its partitions with lag, then those without, folded."""
    if g.kind == "share":
        return share_group(g)
    members = (
        "; ".join(f"{shown(m.client_id)} on {shown(m.host.lstrip('/')) or '?'}" for m in g.members)
        or "none"
    )
    if g.note:
        members += f" (note: {shown(g.note)})"
    out = [
        f"<h3>Group <code>{h(shown(g.group))}</code> <small>{h(g.kind)}, {h(shown(g.state))}</small> "
        f'<span class="lag">lag {h(g.lag)}</span></h3><p>Members ({len(g.members)}): {h(members)}</p>'
    ]
    lagging = [p for p in g.partitions if p.lag]
    idle = [p for p in g.partitions if not p.lag]
    if lagging:
        out.append(_table(_PARTITION_HEAD, _partition_rows(lagging), "partitions lagging"))
    if idle:
        n = len(idle)
        out.append(
            f'<details class="idle"><summary>{h(n)} partition{"" if n == 1 else "s"} with no lag'
            "</summary>"
            + _table(_PARTITION_HEAD, _partition_rows(idle), "partitions idle")
            + "</details>"
        )
    return "".join(out)


def _client(base: str, c: ClientStatus) -> str:
    """A consumer client: its dead letters and retry backlog first, then its groups (partitions
    with lag listed, those without folded)."""
    out = [
        f"<section><h2>Consumer client {h(c.index)} <small>{h(c.servers)}</small></h2>",
        f"<p>Topics: {h(', '.join(c.topics) or '(none found)')}</p>",
    ]
    if c.dead_letters:
        out.append(
            "<h3>Dead letters</h3>"
            + _table(
                ["Topic", "Of topic", "Records", "Not replayed"],
                [
                    [
                        f'<a href="{q(base + "/dead-letters", {"topic": t.topic})}">{h(t.topic)}</a>',
                        h(t.original_topic),
                        h(t.records),
                        h(t.not_replayed),
                    ]
                    for t in c.dead_letters
                ],
                "dead",
            )
        )
    else:
        out.append("<p>Dead letters: none</p>")
    if c.retry_waiting:
        out.append(
            "<p>Waiting for a retry: "
            + h(", ".join(f"{t.topic} {t.records}" for t in c.retry_waiting))
            + "</p>"
        )
    out.extend(_group(g) for g in c.groups)
    out.append(other_share_groups(c))
    out.append("</section>")
    return "".join(out)


def _waiting(t: TopicCount) -> int:
    """The dead letters of a topic no replay has moved yet (all of them when that is not known)."""
    return t.records if t.not_replayed is None else t.not_replayed


def _overdue(g: GroupStatus) -> int:
    """A group's lag that is not records waiting for a retry that is not due yet."""
    return sum(p.lag for p in g.partitions if p.due_at is None)


def summary(base: str, report: StatusReport) -> str:
    """The top of the overview: whether anything needs attention, the groups with lag and the dead
    letters by topic, over every consumer client."""
    groups = [(c, g) for c in report.clients for g in c.groups if g.lag]
    dead = [(c, t) for c in report.clients for t in c.dead_letters if t.records]
    needs = [
        f"{_waiting(t)} dead letter{'' if _waiting(t) == 1 else 's'} not replayed in {t.topic}"
        for _, t in dead
        if _waiting(t)
    ] + [
        f"group {shown(g.group)} ({g.kind}) has lag {_overdue(g)}" for _, g in groups if _overdue(g)
    ]
    if needs:
        verdict = (
            '<div class="attention needs" role="status"><strong>Needs attention</strong><ul>'
            + "".join(f"<li>{h(n)}</li>" for n in needs)
            + "</ul></div>"
        )
    else:
        verdict = (
            '<div class="attention ok" role="status"><strong>Nothing needs attention</strong>: '
            "no group has lag (other than retries not due yet), no dead letter waits for a replay."
            "</div>"
        )
    lag = (
        _table(
            ["Group", "Kind", "Client", "Lag", ""],
            [
                [
                    f"<code>{h(shown(g.group))}</code>",
                    h(g.kind),
                    h(c.index),
                    h(g.lag),
                    h("" if _overdue(g) else "retries not due yet"),
                ]
                for c, g in groups
            ],
            "summary-lag",
        )
        if groups
        else "<p>No group has lag.</p>"
    )
    letters = (
        _table(
            ["Dead-letter topic", "Of topic", "Dead letters", "Not replayed"],
            [
                [
                    f'<a href="{q(base + "/dead-letters", {"topic": t.topic})}">{h(t.topic)}</a>',
                    h(t.original_topic),
                    h(t.records),
                    h(t.not_replayed),
                ]
                for _, t in dead
            ],
            "summary-dead",
        )
        if dead
        else "<p>No dead letters.</p>"
    )
    return (
        '<section class="summary"><h2>Summary</h2>'
        f"{verdict}<h3>Groups with lag</h3>{lag}<h3>Dead letters by topic</h3>{letters}</section>"
    )


def refresh_controls(base: str, refresh: int | None) -> str:
    """Reload now (keeping the auto-refresh), and turn the auto-refresh on or off."""
    now = q(base, {"refresh": refresh})
    if refresh:
        auto = (
            f'<span class="auto-on">Reloads every {h(refresh)} s</span> '
            f'<a class="auto-off" href="{h(base)}">Turn auto-refresh off</a>'
        )
    else:
        auto = (
            f'<a class="auto-on" href="{q(base, {"refresh": REFRESH_SECONDS})}">'
            f"Auto-refresh every {REFRESH_SECONDS} s</a>"
        )
    return f'<a class="refresh" href="{now}">Refresh</a> {auto}'


def status_page(base: str, report: StatusReport, refresh: int | None = None) -> str:
    """The overview: the summary first, then each consumer client."""
    return (
        f'<p class="at">As of {h(report.at)} {refresh_controls(base, refresh)}</p>'
        + summary(base, report)
        + "".join(_client(base, c) for c in report.clients)
    )


# ----------------------------------------------------------------------------- dead letters


def replay_form(
    base: str,
    csrf: str | None,
    topics: Iterable[str],
    values: Mapping[str, str],
    *,
    action: str = "replay",
    fields: tuple[tuple[str, str, str], ...] = REPLAY_FIELDS,
) -> str:
    """The replay (or, `action="purge"`, the purge) filter form; its button asks for the dry run."""
    chosen = values.get("topic", "")
    options = ['<option value="">every dead-letter topic</option>'] + [
        f'<option value="{h(t)}"{" selected" if t == chosen else ""}>{h(t)}</option>'
        for t in topics
    ]
    inputs = "".join(
        f'<label>{h(label)} <input name="{h(name)}" value="{h(values.get(name, ""))}" '
        f'placeholder="{h(hint)}"></label>'
        for name, label, hint in fields
    )
    return (
        f'<form method="post" action="{h(base)}/{h(action)}/preview" '
        f'class="{"replay" if action == "replay" else "replay " + h(action)}">'
        f'<input type="hidden" name="csrf" value="{h(csrf or "")}">'
        f'<label>Dead-letter topic <select name="topic">{"".join(options)}</select></label>{inputs}'
        f'<button name="preview" value="1">Preview {h(action)} (dry run)</button></form>'
    )


def dead_letters_page(base: str, topics: list[TopicDeadLetters], csrf: str | None) -> str:
    out = []
    for t in topics:
        out.append(
            f"<section><h2>{h(t.topic)} <small>{h(t.records)} dead letter{'' if t.records == 1 else 's'}"
            f"{h(f' ({t.purged} purged: not listed)' if t.purged else '')}</small></h2>"
        )
        if t.classes:
            out.append(
                _table(
                    ["Count", "Status", "Original topic", "First", "Last", "Error class", ""],
                    [
                        [
                            h(c.count),
                            h("-" if c.status is None else c.status),
                            h(shown(c.original_topic)),
                            f'<span class="t">{h(c.first or "-")}</span>',
                            f'<span class="t">{h(c.last or "-")}</span>',
                            f'<span class="err">{h(shown(c.error_class))}</span>',
                            f'<a class="records" href="{q(base + "/dead-letters/records", {"topic": t.topic, "class": c.error_class})}">'
                            f"records</a>",
                        ]
                        for c in t.classes
                    ],
                    "classes",
                )
            )
        out.append("</section>")
    if not topics:
        out.append("<p>No dead-letter topics.</p>")
    out.append(
        "<h2>Replay</h2><p>Pick what to redrive to each record's original topic; the dry run shows what "
        "would move before anything does.</p>"
    )
    out.append(replay_form(base, csrf, [t.topic for t in topics], {}))
    return "".join(out)


def record(d: DeadLetter) -> str:
    """One dead letter: where it came from, why it failed, its headers and value."""
    origin = (
        f"{shown(d.original_topic, '?')}[{'?' if d.original_partition is None else d.original_partition}]"
        f"@{'?' if d.original_offset is None else d.original_offset}"
    )
    facts = [
        ("Key", d.key if d.key is not None else "(none)"),
        ("Dead-lettered", d.timestamp or "-"),
        ("From", origin),
        ("First failure", shown(d.first_failure_time)),
        ("Error", shown(d.error)),
        ("Status", "-" if d.status is None else d.status),
        ("Retries", "-" if d.retry_count is None else d.retry_count),
        ("Replays", d.replay_count),
        ("Trace id", d.trace_id or "-"),
    ]
    dl = "".join(f"<dt>{h(k)}</dt><dd>{h(v)}</dd>" for k, v in facts)
    headers = (
        _table(["Header", "Value"], [[h(k), h(v)] for k, v in d.headers], "headers")
        if d.headers
        else "<p>No headers.</p>"
    )
    more = f" … ({d.value_size} bytes)" if d.value_size > len(d.value_preview.encode()) else ""
    omitted = " [value left out of the copy]" if d.value_omitted else ""
    return (
        f'<article class="record" id="r-{h(d.partition)}-{h(d.offset)}">'
        f"<h3>{h(d.topic)}[{h(d.partition)}]@{h(d.offset)}</h3><dl>{dl}</dl>{headers}"
        f'<p>Value ({h(d.value_size)} bytes){h(more + omitted)}:</p><pre class="value">{h(d.value_preview)}</pre>'
        "</article>"
    )


def records_page(
    base: str,
    topic: str,
    error_class: str | None,
    records: list[DeadLetter],
    limit: int,
    more: bool,
    csrf: str | None,
    grep: str,
    extra: str = "",
) -> str:
    """The records of one class, after the replay form (and `extra`: the purge's) prefilled for them."""
    head = (
        f"<p>Topic <code>{h(topic)}</code>"
        + (f', error class <span class="err">{h(shown(error_class))}</span>' if error_class else "")
        + f": {len(records)} record{'' if len(records) == 1 else 's'}"
        + (f" (the first {limit}; narrow the filter to see others)" if more else "")
        + "</p>"
    )
    body = "".join(record(d) for d in records) or "<p>No dead letters match.</p>"
    return (
        head
        + "<details><summary>Replay these</summary>"
        + replay_form(base, csrf, [topic], {"topic": topic, "grep": grep})
        + "</details>"
        + extra
        + body
    )


# ----------------------------------------------------------------------------- replay


def _report(report: ReplayReport) -> str:
    verb = "would move" if report.dry_run else "moved"
    out = []
    for t in report.topics:
        to = ", ".join(f"{n} to {topic}" for topic, n in sorted(t.destinations.items()))
        out.append(
            f"<section><h2>{h(t.topic)} <small>job {h(t.job)}</small></h2>"
            f'<p class="summary">{h(verb)} <strong class="moved">{h(t.moved)}</strong>'
            f"{h(' (' + to + ')' if to else '')}, parked {h(t.parked_count)}, not matching {h(t.skipped)}"
            f"{h(f', already purged {t.purged}' if t.purged else '')}</p>"
        )
        if t.moves:
            out.append(
                _table(
                    ["Partition", "Offset", "Key", "To", "Replay", "Error class"],
                    [
                        [
                            h(m.partition),
                            h(m.offset),
                            h(m.key if m.key is not None else "(none)"),
                            h(shown(m.to_topic)),
                            h(m.replay_count),
                            h(shown(m.error_class)),
                        ]
                        for m in t.moves[:200]
                    ],
                    "moves",
                )
            )
            if t.moved > 200:
                out.append(f"<p>… and {h(t.moved - 200)} more</p>")
        if t.parked:
            out.append(
                "<h3>Parked</h3>"
                + _table(
                    ["Partition", "Offset", "Key", "Why"],
                    [
                        [
                            h(p.partition),
                            h(p.offset),
                            h(p.key if p.key is not None else "(none)"),
                            h(p.reason),
                        ]
                        for p in t.parked[:200]
                    ],
                    "parked",
                )
            )
        out.append("</section>")
    if not report.topics:
        out.append("<p>No dead-letter topics.</p>")
    out.append(f'<p>Audit: <code class="audit">{h(audit_line(report))}</code></p>')
    return "".join(out)


def run_form(
    action: str, params: Mapping[str, str], signature: str, csrf: str | None, label: str, n: int
) -> str:
    """The form that runs exactly what a preview showed: its parameters, the preview's signature
    and the CSRF token as hidden fields; the button disabled when the run would change nothing."""
    hidden = "".join(
        f'<input type="hidden" name="{h(k)}" value="{h(v)}">' for k, v in sorted(params.items())
    )
    return (
        f'<form method="post" action="{h(action)}" class="run">{hidden}'
        f'<input type="hidden" name="preview" value="{h(signature)}">'
        f'<input type="hidden" name="csrf" value="{h(csrf or "")}">'
        f"<button{' disabled' if not n else ''}>{h(label)}</button></form>"
    )


def preview_page(
    base: str, report: ReplayReport, params: Mapping[str, str], signature: str, csrf: str | None
) -> str:
    """The dry run's report, and the form that runs exactly this replay."""
    run = run_form(f"{base}/replay/run", params, signature, csrf, "Run this replay", report.moved)
    filt = ", ".join(f"{k} = {v}" for k, v in sorted(params.items())) or "none"
    return (
        f"<p>Dry run: nothing was moved. Filter: {h(filt)}.</p>"
        + _report(report)
        + run
        + '<p class="hint">Records that arrive in the dead-letter topic after this preview are not part of it '
        "unless they match too; the run reports exactly what it moved.</p>"
    )


def result_page(report: ReplayReport) -> str:
    return "<p>Replay done.</p>" + _report(report)


CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#1f3a5f;color:#fff;padding:.6em 1.2em}
nav{background:#dfe6ef;padding:.5em 1.2em;display:flex;gap:1.2em;align-items:center}
nav a{color:#1f3a5f;font-weight:600}
nav .logout{margin-left:auto}
main{padding:0 1.2em 2em;max-width:78em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}h3{font-size:1.05em}
small{color:#5b6573;font-weight:normal}
table{border-collapse:collapse;margin:.4em 0 1em;background:#fff}
th,td{border:1px solid #ccd3dc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eef1f5}
td{overflow-wrap:anywhere;max-width:40em}
.lag{background:#fff3cd;padding:0 .4em;border-radius:.3em}
.err{font-family:ui-monospace,monospace}
a.records,.t{white-space:nowrap}
.error{background:#fde2e1;border:1px solid #e0a3a0;padding:.5em .8em}
.hint{color:#5b6573}
.record{background:#fff;border:1px solid #ccd3dc;padding:.4em 1em;margin:.8em 0}
.record dl{display:grid;grid-template-columns:9em 1fr;margin:.3em 0}
.record dt{color:#5b6573}.record dd{margin:0;overflow-wrap:anywhere}
details{margin:.6em 0}summary{cursor:pointer;font-weight:600}
pre.value{background:#f0f2f5;padding:.5em;white-space:pre-wrap;overflow-wrap:anywhere}
form.replay,form.login{display:grid;grid-template-columns:repeat(auto-fill,minmax(15em,1fr));gap:.6em;
 background:#fff;border:1px solid #ccd3dc;padding:.8em;max-width:60em}
form label{display:flex;flex-direction:column;font-size:.9em;color:#3b4450}
input,select,button{font:inherit;padding:.3em}
button{background:#1f3a5f;color:#fff;border:0;border-radius:.3em;padding:.4em 1em;cursor:pointer}
button[disabled]{background:#9aa5b1}
.summary{background:#fff;border:1px solid #ccd3dc;padding:.2em 1em .6em;margin:.8em 0}
.attention{padding:.5em .8em;border-radius:.3em;margin:.6em 0}.attention ul{margin:.3em 0}
.attention.needs{background:#fde2e1;border:1px solid #e0a3a0}
.attention.ok{background:#e3f4e1;border:1px solid #9ccc95}
p.at{display:flex;gap:1em;align-items:center;flex-wrap:wrap}
a.refresh{background:#1f3a5f;color:#fff;border-radius:.3em;padding:.3em 1em;text-decoration:none}
code.audit{display:block;background:#fff;border:1px solid #ccd3dc;padding:.5em;overflow-wrap:anywhere}
"""
