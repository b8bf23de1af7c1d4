"""The console's purge (docs/console.md, "Purge"): `freedom dlq purge` behind the same confirmation
as the replay. Its form (on the dead-letters and records pages) takes the replay's filters; its
button runs the dry run, whose preview lists what would be purged and carries a signature of the
previewed parameters; **Run this purge** runs exactly that purge (a changed or unpreviewed one is
refused, and a replay's preview never runs a purge, nor the other way round: the signature names
the action). The audit line names the console token's label, as a replay's does. The JSON API,
`POST <path>/api/purge`, takes the bearer token, as `/api/replay` does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from freedom.console.auth import Caller
from freedom.console.forms import PURGE_PARAMS, Refused, ReplayArgs, json_fields, purge_args
from freedom.console.pages import FILTER_FIELDS, h, replay_form, run_form, shown
from freedom.ops.purge import PurgeReport, audit_line, purge
from freedom.ops.target import OpsError

if TYPE_CHECKING:
    from freedom.console.routes import Console

audit_log = logging.getLogger("freedom.ops.audit")
SHOWN = 200  # records listed on a page (the counts are complete)


# ----------------------------------------------------------------------------- pages


def purge_form(
    base: str, csrf: str | None, topics: Iterable[str], values: Mapping[str, str]
) -> str:
    """The purge's filter form; its button asks for the dry run."""
    return replay_form(base, csrf, topics, values, action="purge", fields=FILTER_FIELDS)


def purge_section(base: str, csrf: str | None, topics: Iterable[str]) -> str:
    """The dead-letters page's purge: what it does, and its form."""
    return (
        "<h2>Purge</h2><p>Move past dead letters without replaying them: they are then no longer "
        "listed, counted as waiting or replayed. Kafka keeps them until its retention removes them. "
        "The dry run shows which first.</p>" + purge_form(base, csrf, topics, {})
    )


def purge_details(base: str, csrf: str | None, topic: str, grep: str) -> str:
    """The records page's purge, folded, prefilled for the class shown."""
    return (
        "<details><summary>Purge these</summary>"
        + purge_form(base, csrf, [topic], {"topic": topic, "grep": grep})
        + "</details>"
    )


def _report(report: PurgeReport) -> str:
    verb = "would purge" if report.dry_run else "purged"
    out = []
    for t in report.topics:
        out.append(
            f"<section><h2>{h(t.topic)} <small>job {h(t.job)}</small></h2>"
            f'<p class="summary">{h(verb)} <strong class="purged">{h(t.purged)}</strong>, '
            f"already purged {h(t.already)}, not matching {h(t.skipped)}</p>"
        )
        if t.records:
            rows = "".join(
                "<tr>"
                + "".join(
                    f"<td>{h(c)}</td>"
                    for c in (
                        r.partition,
                        r.offset,
                        r.key if r.key is not None else "(none)",
                        shown(r.original_topic),
                        shown(r.error_class),
                    )
                )
                + "</tr>"
                for r in t.records[:SHOWN]
            )
            head = "".join(
                f"<th>{c}</th>" for c in ("Partition", "Offset", "Key", "From", "Error class")
            )
            out.append(
                f'<table class="purged"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
            )
            if t.purged > SHOWN:
                out.append(f"<p>… and {h(t.purged - SHOWN)} more</p>")
        out.append("</section>")
    if not report.topics:
        out.append("<p>No dead-letter topics.</p>")
    out.append(f'<p>Audit: <code class="audit">{h(audit_line(report))}</code></p>')
    return "".join(out)


def preview_page(
    base: str, report: PurgeReport, params: Mapping[str, str], signature: str, csrf: str | None
) -> str:
    """The dry run's report, and the form that runs exactly this purge."""
    run = run_form(f"{base}/purge/run", params, signature, csrf, "Run this purge", report.purged)
    filt = ", ".join(f"{k} = {v}" for k, v in sorted(params.items())) or "none"
    return (
        f"<p>Dry run: nothing was purged. Filter: {h(filt)}.</p>"
        + _report(report)
        + run
        + '<p class="hint">Purged records are not deleted and not replayed: they no longer wait. '
        "Records that arrive after this preview are part of the run when they match; the run "
        "reports exactly what it purged.</p>"
    )


# ----------------------------------------------------------------------------- routes


def _signed(args: ReplayArgs) -> dict[str, str]:
    """What a purge's preview signs: its parameters and the action, so that the signature of a
    replay's preview (the same parameters) never runs a purge."""
    return {**args.params, "action": "purge"}


class Purging:
    """The purge routes of one console."""

    def __init__(self, console: Console) -> None:
        self.c = console

    def dry_run(self, args: ReplayArgs, caller: Caller) -> PurgeReport:
        return purge(
            self.c.target(), args.topic, args.flt, dry_run=True, operator=self.c.operator(caller)
        )

    def run_purge(self, args: ReplayArgs, caller: Caller) -> PurgeReport:
        """One replay or purge at a time (a second run of one job would be fenced by the first)."""
        if not self.c.one_job.acquire(blocking=False):
            raise OpsError("a replay or purge started from the console is running; wait for it")
        try:
            audit_log.info(
                "web console: dlq purge requested from %s (%s): topic %s, filter %s",
                caller.address,
                caller.how,
                args.topic or "(every dead-letter topic)",
                json.dumps(args.flt.describe(), sort_keys=True, ensure_ascii=False),
            )
            return purge(self.c.target(), args.topic, args.flt, operator=self.c.operator(caller))
        finally:
            self.c.one_job.release()

    async def preview(self, request: Request, caller: Caller) -> Response:
        args = purge_args(await self.c.form(request, caller))
        report = await self.c.work(lambda: self.dry_run(args, caller))
        signature = self.c.keys.replay_signature(_signed(args))
        csrf = self.c.keys.csrf(caller.session) if caller.session else None
        body = preview_page(self.c.base, report, args.params, signature, csrf)
        return self.c.html("Purge preview", body, caller)

    async def run(self, request: Request, caller: Caller) -> Response:
        fields = await self.c.form(request, caller)
        args = purge_args(fields)
        if not self.c.keys.replay_ok(_signed(args), fields.get("preview", "")):
            raise Refused(
                400, "run a purge from its preview (the dry run): this one was not previewed"
            )
        report = await self.c.work(lambda: self.run_purge(args, caller))
        return self.c.html("Purge done", "<p>Purge done.</p>" + _report(report), caller)

    async def api(self, request: Request, caller: Caller) -> Response:
        """POST {"topic": ..., filters ..., "dry_run": true}; a run needs "dry_run": false and the bearer token."""
        if caller.how != "bearer":
            raise Refused(
                403,
                "POST /api/purge takes Authorization: Bearer <console_token> (use the pages' forms "
                "when logged in)",
            )
        try:
            given = json.loads(await self.c.body(request))
        except ValueError:
            raise Refused(400, "expected a JSON object") from None
        fields, dry_run = json_fields(given, PURGE_PARAMS)
        args = purge_args(fields)
        if dry_run:
            report = await self.c.work(lambda: self.dry_run(args, caller))
        else:
            report = await self.c.work(lambda: self.run_purge(args, caller))
        return self.c.json({**_plain(report), "audit": audit_line(report)})


def _plain(report: PurgeReport) -> dict[str, object]:
    value: dict[str, object] = json.loads(json.dumps(dataclasses.asdict(report), default=str))
    return value
