"""Billing operations: what a property manager runs every month and every day.

- `settings`   — the site file's `[billing]` section (pools, charges, bills), validated;
- `periods`    — billing periods (freeze instant to freeze instant) and capture instants;
- `readings`   — the meters' registers at each capture instant (`billing_reading`);
- `apportion`  — common-area apportionment (公摊): pools, loss, largest-remainder shares;
- `charges`    — property fee, rent, service and custom charges, periodic or one-off;
- `runs`       — how a pool's or a charge's lines are posted, idempotent per period;
- `bills`      — post-paid bills: draft → confirm → issue, payments, arrears, late fees;
- `batch`      — batch and scheduled operations over many accounts or meters;
- `reports`    — finance and energy reports, reconciled with the ledger;
- `loss`       — loss and tamper analysis per building;
- `export`     — CSV, XLSX (with charts) and printable HTML;
- `service`    — the core service the runtime starts (captures readings, runs month-end
  and due batch jobs).

Money is computed with the rating module's functions (`round_fen`, `largest_remainder`,
`bill_usage`) and written through `ledger.post_journal` only. Rules and worked examples:
domain.md §4 and §6. Reference: docs/billing.md.
"""
