"""An index on journal (kind, created_at): the account view's cost of today and the tenant
page's cost of the month sum the usage journals since a time. Without it each of those
reads scanned every journal ever written — every 60 s on every instance, growing by a
usage journal per meter and billing period for as long as the site runs.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_journal_kind_created_at", "journal", ["kind", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_journal_kind_created_at", table_name="journal")
