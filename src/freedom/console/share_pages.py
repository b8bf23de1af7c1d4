"""The console's view of share groups (KIP-932), on the overview where the consumer groups are: a
share group's state, members, configs and partitions (topic start and end, the share-partition
start offset, the lag), and the other share groups found on a client's cluster.

The same rule as pages.py: every text from a broker through `printable`, then HTML-escaped with its
control and bidirectional characters escaped (pages.py imports this module, so the two helpers are
repeated here rather than imported).
"""

from __future__ import annotations

import html
from collections.abc import Iterable

from freedom.ops.status import ClientStatus, GroupStatus, PartitionStatus
from freedom.wire.encoding import escape_controls, printable

_HEAD = ["Topic", "Partition", "Start", "End", "Share start", "Lag"]


def _h(value: object) -> str:
    return html.escape(escape_controls("" if value is None else str(value)), quote=True)


def _shown(text: str | None, missing: str = "-") -> str:
    return printable(text) if text else missing


def _table(rows: Iterable[list[str]], cls: str) -> str:
    ths = "".join(f"<th>{_h(c)}</th>" for c in _HEAD)
    trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{_h(cls)}"><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table>'


def lag_text(p: PartitionStatus) -> str:
    """The lag as shown: the broker's count, `~N` estimated, `?` not known."""
    return {"estimate": f"~{p.lag}", "unknown": "?"}.get(p.lag_source, str(p.lag))


def _rows(parts: Iterable[PartitionStatus]) -> list[list[str]]:
    return [
        [
            _h(_shown(p.topic)),
            _h(p.partition),
            _h("-" if p.start is None else p.start),
            _h(p.end),
            _h("-" if p.share_start is None else p.share_start),
            _h(lag_text(p)),
        ]
        for p in parts
    ]


def share_group(g: GroupStatus) -> str:
    """A share group: its heading (kind "share", state), members, configs and note, then its
    partitions with lag, those without folded."""
    members = (
        "; ".join(
            f"{_shown(m.client_id)} on {_shown(m.host.lstrip('/'))}"
            + (f" ({len(m.partitions)} partitions)" if m.partitions else "")
            for m in g.members
        )
        or "none"
    )
    lag = sum(p.lag for p in g.partitions)
    unknown = any(p.lag_source == "unknown" for p in g.partitions)
    out = [
        f'<h3 class="share">Group <code>{_h(_shown(g.group))}</code> '
        f"<small>share, {_h(_shown(g.state))}</small> "
        f'<span class="lag">lag {_h("?" if unknown else lag)}</span></h3>'
        f"<p>Members ({len(g.members)}): {_h(members)}</p>"
    ]
    if g.configs:
        out.append(
            '<p class="configs">Configs: '
            + ", ".join(
                f"<code>{_h(k)}</code> = <code>{_h(_shown(v))}</code>"
                for k, v in sorted(g.configs.items())
            )
            + "</p>"
        )
    if g.note:
        out.append(f'<p class="note">Note: {_h(_shown(g.note))}</p>')
    lagging = [p for p in g.partitions if p.lag or p.lag_source == "unknown"]
    idle = [p for p in g.partitions if p not in lagging]
    if lagging:
        out.append(_table(_rows(lagging), "partitions lagging share"))
    if idle:
        n = len(idle)
        out.append(
            f'<details class="idle"><summary>{_h(n)} partition{"" if n == 1 else "s"} with no lag'
            "</summary>" + _table(_rows(idle), "partitions idle share") + "</details>"
        )
    return "".join(out)


def other_share_groups(c: ClientStatus) -> str:
    """The share groups on the client's cluster that no client of the service names."""
    if not c.other_share_groups:
        return ""
    rows = "".join(
        f"<tr><td><code>{_h(_shown(g))}</code></td><td>share</td><td>{_h(_shown(state))}</td></tr>"
        for g, state in c.other_share_groups
    )
    return (
        "<h3>Other share groups on this cluster</h3>"
        '<table class="other-share"><thead><tr><th>Group</th><th>Kind</th><th>State</th></tr>'
        f"</thead><tbody>{rows}</tbody></table>"
    )
