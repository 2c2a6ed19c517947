"""The end of a run: the summary (printed, and one JSON line for scripts), and the exit code."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from atlas.demo.counts import ShopCounts

SUMMARY_PREFIX: Final = "demo-summary: "
EXIT_OK: Final = 0
EXIT_INVARIANT_FAILED: Final = 1
EXIT_TREE_GAVE_UP: Final = 3


@dataclass(frozen=True)
class FaultOutcome:
    """One injected fault: whether it was injected and ended, and the evidence of recovery."""

    name: str
    injected: bool
    ended: bool
    recovered: bool
    evidence: str


@dataclass(frozen=True)
class DemoSummary:
    """Everything the run ends with."""

    users: int
    counts: ShopCounts
    flows: dict[str, int]
    messages: int
    restarts: int
    crash_reports: int
    restarts_by_actor: dict[str, int]
    faults: list[FaultOutcome]
    invariants_ok: bool
    violations: list[str]
    audit_counts: dict[str, int]
    tree_exit_code: int
    unanswered: int
    node: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> str:
        """The summary as one JSON object (the last line a run prints, after :data:`SUMMARY_PREFIX`)."""
        return json.dumps(
            {
                "users": self.users,
                "counts": self.counts.as_dict(),
                "flows": self.flows,
                "messages": self.messages,
                "restarts": self.restarts,
                "crash_reports": self.crash_reports,
                "restarts_by_actor": self.restarts_by_actor,
                "faults": [vars(fault) for fault in self.faults],
                "invariants_ok": self.invariants_ok,
                "violations": self.violations,
                "audit_counts": self.audit_counts,
                "tree_exit_code": self.tree_exit_code,
                "unanswered": self.unanswered,
                "node": self.node,
                **self.extra,
            },
            sort_keys=True,
        )


def exit_code(summary: DemoSummary) -> int:
    """0 when every invariant held and the tree stopped cleanly; otherwise why not."""
    if not summary.invariants_ok:
        return EXIT_INVARIANT_FAILED
    if summary.tree_exit_code != 0:
        return EXIT_TREE_GAVE_UP
    return EXIT_OK


def print_summary(console: Console, summary: DemoSummary) -> None:
    """The human summary, then the JSON line."""
    counts = summary.counts
    table = Table(title="Atlas demo: summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("users", f"{counts.users} ({counts.referred} through an invite link)")
    table.add_row("payments", f"Stars {counts.paid_stars}, Crypto Pay {counts.paid_cryptopay}")
    table.add_row("balance", f"{counts.topups} top-ups, {counts.balance_purchases} purchases from balance")
    table.add_row("renewals", str(counts.renewals))
    table.add_row("promo codes / referral rewards", f"{counts.promo_redemptions} / {counts.referral_rewards}")
    table.add_row("keys", f"{counts.keys_present} active, {counts.keys_revoked} revoked")
    table.add_row("messages", f"{summary.messages} sent by the bot ({counts.outbox_sent} notices)")
    table.add_row("restarts", f"{summary.restarts} ({_by_actor(summary.restarts_by_actor)})")
    table.add_row("crash reports", str(summary.crash_reports))
    table.add_row("flows", ", ".join(f"{name} {count}" for name, count in summary.flows.items()))
    for fault in summary.faults:
        mark = "recovered" if fault.recovered else "NOT RECOVERED"
        table.add_row(f"fault: {fault.name}", f"{mark}: {fault.evidence}")
    table.add_row("VPN node", summary.node)
    verdict = "passed" if summary.invariants_ok else "FAILED"
    table.add_row("invariants", verdict)
    console.print(table)
    for violation in summary.violations:
        console.print(f"  invariant violated: {violation}", highlight=False, soft_wrap=True)
    console.print(SUMMARY_PREFIX + summary.as_json(), highlight=False, soft_wrap=True, markup=False)


def _by_actor(restarts: dict[str, int]) -> str:
    return ", ".join(f"{path} {count}" for path, count in sorted(restarts.items())) or "none"
