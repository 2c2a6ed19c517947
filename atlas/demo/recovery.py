"""Did the tree recover from each fault? Pure judgements over the evidence the run collected."""

from __future__ import annotations

from dataclasses import dataclass

from atlas.demo.faults import Fault, FaultLog
from atlas.demo.summary import FaultOutcome


@dataclass(frozen=True)
class Evidence:
    """What the run saw, gathered after the crowd finished and the work drained."""

    served_429: int
    outbox_pending: int
    keys_pending: int
    node_keys: int
    cryptopay_paid_after_outage: int
    intake_restarts: int
    replies_after_crash: int


def judge(log: FaultLog, evidence: Evidence) -> list[FaultOutcome]:
    """One outcome per fault, in schedule order."""
    rules: dict[Fault, tuple[bool, str]] = {
        Fault.BOT_API_429: (
            evidence.served_429 > 0 and evidence.outbox_pending == 0,
            f"{evidence.served_429} answers were 429; {evidence.outbox_pending} notices still pending",
        ),
        Fault.NODE_OUTAGE: (
            evidence.keys_pending == 0,
            f"{evidence.keys_pending} keys pending on the node afterwards; it holds {evidence.node_keys}",
        ),
        Fault.CRYPTOPAY_OUTAGE: (
            evidence.cryptopay_paid_after_outage > 0,
            f"{evidence.cryptopay_paid_after_outage} Crypto Pay invoices paid after it came back",
        ),
        Fault.INTAKE_CRASH: (
            evidence.intake_restarts > 0 and evidence.replies_after_crash > 0,
            f"the intake restarted {evidence.intake_restarts} time(s); "
            f"{evidence.replies_after_crash} bot messages after the crash",
        ),
    }
    outcomes = []
    for fault, (recovered, why) in rules.items():
        injected, ended = fault in log.injected, fault in log.ended
        outcomes.append(FaultOutcome(fault.value, injected, ended, injected and ended and recovered, why))
    return outcomes
