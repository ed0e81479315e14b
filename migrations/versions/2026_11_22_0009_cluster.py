"""cluster: collector processes (nodes) and the agent connections each holds

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per running collector process. A node whose heartbeat_at is
    # older than the cluster's liveness window is gone (killed, cut off): its
    # connections no longer count, and the leader deletes it later.
    op.create_table(
        "cluster_nodes",
        sa.Column("node_id", sa.String(32), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("leader", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    # One row per live agent connection of a node: what another node needs to
    # route a command to it (capabilities, engines) without asking.
    op.create_table(
        "cluster_sessions",
        sa.Column("node_id", sa.String(32), sa.ForeignKey("cluster_nodes.node_id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("session_id", sa.String(32), nullable=False),
        sa.Column("agent_id", sa.Integer, nullable=False),
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("engines", sa.Text, nullable=False),
        sa.Column("capabilities", sa.Text, nullable=False),
        sa.Column("opened_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("node_id", "session_id", name="pk_cluster_sessions"),
    )


def downgrade() -> None:
    op.drop_table("cluster_sessions")
    op.drop_table("cluster_nodes")
