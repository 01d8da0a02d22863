"""The audit log: a durable, private-by-default, hash-chained record of every request that was not plainly allowed.

The pipeline writes records through :class:`AuditWriter` (off the request path); :class:`AuditStore` reads them
back (``guardrails audit list|show|stats|export|prune|verify`` on the command line).
"""

from guardrails.audit.record import Entry, should_record
from guardrails.audit.settings import DEFAULT_DB, AuditSettings
from guardrails.audit.store import AuditStore, VerifyReport, parse_duration
from guardrails.audit.writer import AuditWriter, SinkStatus

__all__ = [
    "AuditSettings",
    "AuditStore",
    "AuditWriter",
    "DEFAULT_DB",
    "Entry",
    "SinkStatus",
    "VerifyReport",
    "parse_duration",
    "should_record",
]
