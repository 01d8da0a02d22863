"""``GET /audit``: the audit log for people, server-rendered (no script, no CDN: it works offline and in any browser).

The list shows the requests recorded (blocked, redacted, warned, scanner errors) with filters (decision, scanner,
category, tenant, time window), charts of counts per scanner and per category over time (inline SVG), and
links to ``/audit/{request_id}``, the detail of one record. Only admin keys may read it: ``Authorization: Bearer``
for programs, HTTP Basic (any user name, the key as password) for a browser. Records hold hashes of content, never
the content itself, unless the policy's ``audit.privacy`` asks for more.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import time
from collections import Counter
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from guardrails.audit import AuditStore, parse_duration
from server.auth import Principal
from server.errors import BadRequest, Forbidden, ServerError, Unauthorized

__all__ = ["router"]

router = APIRouter(tags=["audit"])

_PALETTE = (
    "#d62728",
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_BUCKETS = 24
_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 12px} h2{font-size:16px;margin:20px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff} th,td{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f0f0f0} tr.block td.d{color:#b00;font-weight:600} tr.redact td.d{color:#a60} tr.warn td.d{color:#770}
form{margin:0 0 12px} form label{margin-right:10px} .charts{display:flex;gap:24px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #ddd;padding:8px} code{font-size:12px} pre{background:#fff;border:1px solid #ddd;
padding:8px;overflow:auto} .muted{color:#777}
"""


def _admin(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    key = None
    if scheme.lower() == "bearer":
        key = value.strip()
    elif scheme.lower() == "basic":
        try:
            key = base64.b64decode(value.strip()).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            key = None
    principal = request.app.state.services.keys.resolve(key)
    if principal is None:
        error = Unauthorized("the audit dashboard needs an admin key (HTTP Basic: the key as password)")
        error.headers = {"WWW-Authenticate": 'Basic realm="guardrails audit", charset="UTF-8"'}
        raise error
    if not principal.admin:
        raise Forbidden("this key may not read the audit log; use an admin key")
    return principal


def _store(request: Request) -> AuditStore | None:
    path = request.app.state.services.audit_db()
    if path is None or not path.exists():
        return None
    return AuditStore(path)


def _fired(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in record["results"] if r["decision"] != "allow" or r["status"] != "ok"]


def _ts(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["time"].replace("Z", "+00:00")).timestamp()


def _query(request: Request, **filters: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records for the table, records for the charts), newest first."""
    store = _store(request)
    if store is None:
        return [], []
    with store:
        limit = filters.pop("limit")
        charted = store.records(**filters, limit=10_000)
        return charted[:limit], charted


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _by_scanner(record: dict[str, Any]) -> set[str]:
    return {r["scanner"] for r in _fired(record)}


def _by_category(record: dict[str, Any]) -> set[str]:
    return {c for r in _fired(record) for c in r["categories"]}


def _timeline(records: list[dict[str, Any]], since: float, key: Any, svg_id: str) -> str:
    """Stacked bars: requests per time bucket, coloured by what ``key`` names (the scanners or categories)."""
    now = time.time()
    width, height, left, bottom = 720, 220, 40, 30
    step = since / _BUCKETS
    buckets: list[Counter[str]] = [Counter() for _ in range(_BUCKETS)]
    scanners: Counter[str] = Counter()
    for record in records:
        index = min(_BUCKETS - 1, max(0, int((_ts(record) - (now - since)) // step)))
        for name in key(record):
            buckets[index][name] += 1
            scanners[name] += 1
    colour = {name: _PALETTE[i % len(_PALETTE)] for i, (name, _) in enumerate(scanners.most_common())}
    top = max((sum(b.values()) for b in buckets), default=0) or 1
    bar = (width - left) / _BUCKETS
    rows = (len(scanners) + 3) // 4
    parts = [
        f'<svg id="{svg_id}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 14 * rows}" '
        f'role="img" aria-label="flagged requests over time">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" stroke="#999"/>',
        f'<text x="0" y="12" font-size="11">{top}</text><text x="0" y="{height - bottom}" font-size="11">0</text>',
    ]
    scale = (height - bottom - 10) / top
    for i, counts in enumerate(buckets):
        y = height - bottom
        for name, _ in scanners.most_common():
            n = counts.get(name, 0)
            if not n:
                continue
            h = n * scale
            y -= h
            parts.append(
                f'<rect class="bar" x="{left + i * bar + 1:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" '
                f'height="{h:.1f}" fill="{colour[name]}"><title>{_e(name)}: {n}</title></rect>'
            )
    for i, x, anchor in (
        (0, left, "start"),
        (_BUCKETS // 2, left + (width - left) / 2, "middle"),
        (_BUCKETS, width, "end"),
    ):
        label = time.strftime("%m-%d %H:%M", time.gmtime(now - since + i * step))
        parts.append(
            f'<text x="{x:.1f}" y="{height - bottom + 16}" font-size="11" text-anchor="{anchor}">{label} UTC</text>'
        )
    for i, name in enumerate(colour):
        x = left + (i % 4) * 170
        y = height + 4 + (i // 4) * 14
        parts.append(
            f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour[name]}"/>'
            f'<text x="{x + 14}" y="{y}" font-size="11">{_e(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _categories(records: list[dict[str, Any]]) -> str:
    counts: Counter[str] = Counter()
    for record in records:
        fired = _fired(record)
        counts.update({c for r in fired for c in r["categories"]})
    rows = counts.most_common(12)
    if not rows:
        return '<p class="muted">no categories reported</p>'
    top = rows[0][1]
    height = 18 * len(rows) + 10
    parts = [
        f'<svg id="categories" xmlns="http://www.w3.org/2000/svg" width="360" height="{height}" role="img" '
        f'aria-label="flagged requests per category">'
    ]
    for i, (name, n) in enumerate(rows):
        w = 200 * n / top
        parts.append(
            f'<text x="0" y="{i * 18 + 13}" font-size="11">{_e(name[:22])}</text>'
            f'<rect x="130" y="{i * 18 + 3}" width="{w:.1f}" height="12" fill="#1f77b4"/>'
            f'<text x="{134 + w:.1f}" y="{i * 18 + 13}" font-size="11">{n}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _page(title: str, body: str) -> HTMLResponse:
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head><body>{body}</body></html>"
    )
    headers = {
        "Cache-Control": "no-store",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'",
    }
    return HTMLResponse(document.encode("utf-8", "replace"), headers=headers)


def _select(name: str, value: str | None, options: list[str]) -> str:
    opts = "".join(
        f'<option value="{_e(o)}"{" selected" if o == (value or "") else ""}>{_e(o or "any")}</option>'
        for o in ["", *options]
    )
    return f'<label>{name} <select name="{name}">{opts}</select></label>'


@router.get("/audit", response_class=HTMLResponse, responses={401: {"description": "Admin key required"}})
async def audit_list(
    request: Request,
    decision: str | None = Query(default=None, pattern="^(|allow|warn|redact|block)$"),
    scanner: str | None = Query(default=None, max_length=128),
    category: str | None = Query(default=None, max_length=128),
    tenant: str | None = Query(default=None, max_length=128),
    since: str = Query(default="24h", max_length=16),
    limit: int = Query(default=100, ge=1, le=1000),
) -> HTMLResponse:
    """Recorded requests with filters, a chart per scanner over time and counts per category."""
    _admin(request)
    try:
        window = parse_duration(since)
    except ValueError as exc:
        raise BadRequest(str(exc), param="since") from None
    if window <= 0:
        raise BadRequest("since must be positive", param="since")
    filters = {
        "since": window,
        "decision": decision or None,
        "scanner": scanner or None,
        "category": category or None,
        "tenant": tenant or None,
        "limit": limit,
    }
    try:
        shown, charted = await asyncio.to_thread(_query, request, **filters)
    except Exception as exc:  # noqa: BLE001 - a broken database is reported on the page, not a 500
        raise ServerError(f"cannot read the audit database: {type(exc).__name__}") from None
    scanners = sorted({r["scanner"] for rec in charted for r in _fired(rec)} | ({scanner} if scanner else set()))
    categories = sorted({c for rec in charted for r in _fired(rec) for c in r["categories"]})
    rows = []
    for record in shown:
        fired = _fired(record)
        rows.append(
            f'<tr class="{_e(record["decision"])}"><td>{_e(record["time"][:19])}</td>'
            f'<td><a href="/audit/{_e(record["request_id"])}"><code>{_e(record["request_id"][:12])}</code></a></td>'
            f'<td>{_e(record["tenant"] or "-")}</td><td class="d">{_e(record["decision"])}</td>'
            f"<td>{_e(record['stage'] or '-')}</td><td>{_e(', '.join(r['scanner'] for r in fired))}</td>"
            f"<td>{_e(', '.join(sorted({c for r in fired for c in r['categories']})))}</td>"
            f"<td>{record['latency_ms']:.1f}</td></tr>"
        )
    table = (
        '<table id="records"><tr><th>time (UTC)</th><th>request</th><th>tenant</th><th>decision</th>'
        "<th>stage</th><th>scanners</th><th>categories</th><th>ms</th></tr>" + "".join(rows) + "</table>"
    )
    form = (
        '<form method="get" action="/audit">'
        + _select("decision", decision, ["block", "redact", "warn", "allow"])
        + _select("scanner", scanner, scanners)
        + _select("category", category, categories)
        + f'<label>tenant <input name="tenant" size="10" value="{_e(tenant or "")}"></label>'
        + f'<label>since <input name="since" size="5" value="{_e(since)}"></label>'
        + '<button type="submit">filter</button></form>'
    )
    body = (
        f"<h1>guardrails audit log</h1>{form}"
        f'<p id="summary">{len(charted)} recorded requests in the last {_e(since)}; showing {len(shown)}.</p>'
        f'<div class="charts"><div class="card"><h2>per scanner over time</h2>'
        f"{_timeline(charted, window, _by_scanner, 'timeline')}</div>"
        f'<div class="card"><h2>per category, in all</h2>{_categories(charted)}</div>'
        f'<div class="card"><h2>per category over time</h2>'
        f"{_timeline(charted, window, _by_category, 'category-timeline')}</div></div>"
        f"<h2>requests</h2>{table if rows else '<p class=muted>no records match</p>'}"
    )
    return _page("guardrails audit", body)


@router.get("/audit/{request_id}", response_class=HTMLResponse, responses={401: {"description": "Admin key"}})
async def audit_detail(request: Request, request_id: str) -> HTMLResponse:
    """One record: decision, every scanner's result, content hashes, chain position."""
    _admin(request)

    def read() -> dict[str, Any] | None:
        store = _store(request)
        if store is None:
            return None
        with store:
            return store.get(request_id)

    record = await asyncio.to_thread(read) if len(request_id) <= 64 and request_id.isalnum() else None
    if record is None:
        return _page("not found", f'<h1>no audit record {_e(request_id[:64])}</h1><p><a href="/audit">back</a></p>')
    results = "".join(
        f'<tr class="{_e(r["decision"])}"><td>{_e(r["stage"])}</td><td>{_e(r["scanner"])}</td>'
        f'<td class="d">{_e(r["decision"])}</td><td>{r["score"]:.3f}</td><td>{_e(", ".join(r["categories"]))}</td>'
        f"<td>{_e(r['status'])}</td><td>{_e(r['reason'])}</td><td>{r['duration_ms']:.1f}</td></tr>"
        for r in record["results"]
    )
    facts = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
        for k, v in (
            ("request id", record["request_id"]),
            ("time", record["time"]),
            ("tenant", record["tenant"] or "-"),
            ("policy", f"{record['policy']['name']} {record['policy']['hash'][:12]}"),
            ("decision", record["decision"]),
            ("stage", record["stage"] or "-"),
            ("flags", " ".join(record["flags"])),
            ("reason", record["reason"]),
            ("latency", f"{record['latency_ms']:.1f} ms"),
            ("seq", record["seq"]),
        )
    )
    body = (
        f'<p><a href="/audit">&larr; all records</a></p><h1>request <code>{_e(record["request_id"])}</code></h1>'
        f'<table id="facts">{facts}</table><h2>scanners</h2><table id="results"><tr><th>stage</th><th>scanner</th>'
        f"<th>decision</th><th>score</th><th>categories</th><th>status</th><th>reason</th><th>ms</th></tr>{results}"
        f"</table><h2>content ({_e(record['content']['privacy'])})</h2>"
        f"<pre>{_e(json.dumps(record['content'], indent=2, ensure_ascii=False))}</pre>"
    )
    return _page(f"audit {record['request_id'][:12]}", body)
