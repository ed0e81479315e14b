"""notification rules and their per-condition state (cooldown, dedupe, watermarks)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per rule: kind task_failed / failure_rate / task_lost /
    # task_stuck / worker_offline / queue_depth, params JSON (name/queue
    # filters, threshold, window_minutes, stuck_after_s, offline_after_s,
    # depth), channel_ids JSON (a list of notification_channels ids; a
    # deleted channel is skipped), cooldown_s, enabled.
    op.create_table(
        "notification_rules",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("channel_ids", sa.Text, nullable=False),
        sa.Column("cooldown_s", sa.Float, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("project_id", "name", name="uq_notification_rules_name"),
    )
    # One row per rule and dedupe key: "rule" (the rule as a whole),
    # "watermark" (how far task_failed / task_lost have read, in last_value),
    # "task:<engine>:<id>", "worker:<engine>:<name>", "queue:<engine>:<name>".
    # last_fired_at is when it last sent (NULL: holding now but not sent, or a
    # watermark); active whether the condition held at the last evaluation.
    op.create_table(
        "notification_rule_state",
        sa.Column("rule_id", sa.Integer, sa.ForeignKey("notification_rules.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("key", sa.String(600), nullable=False),
        sa.Column("last_fired_at", sa.Float),
        sa.Column("last_value", sa.Float),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("rule_id", "key", name="pk_notification_rule_state"),
    )


def downgrade() -> None:
    op.drop_table("notification_rule_state")
    op.drop_table("notification_rules")
