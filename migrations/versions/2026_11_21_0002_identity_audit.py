"""identity, sessions, invitations, password resets, audit chain

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.Float, nullable=nullable)


def _user_fk(name: str = "user_id", nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        # Stored lower-cased: one account per address, whatever its case.
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("is_superuser", sa.Boolean, nullable=False, server_default=sa.false()),
        _ts("created_at", nullable=False),
        _ts("password_changed_at"),
        _ts("disabled_at"),
    )
    op.create_table(
        "memberships",
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        _user_fk(),
        sa.Column("role", sa.String(16), nullable=False),
        _ts("created_at", nullable=False),
        sa.PrimaryKeyConstraint("project_id", "user_id", name="pk_memberships"),
    )
    op.create_index("ix_memberships_user", "memberships", ["user_id"])
    op.create_table(
        "sessions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _user_fk(),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        _ts("created_at", nullable=False),
        _ts("last_used_at", nullable=False),
        _ts("expires_at", nullable=False),
        sa.Column("idle_s", sa.Float, nullable=False),
        _ts("revoked_at"),
        sa.Column("source", sa.String(64)),
        sa.Column("user_agent", sa.String(255)),
    )
    op.create_index("ix_sessions_user", "sessions", ["user_id"])
    with op.batch_alter_table("api_tokens") as batch:
        batch.create_index("ix_api_tokens_user", ["user_id"])
    op.create_table(
        "invitations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("invited_by", sa.Integer, sa.ForeignKey("users.id", ondelete="SET NULL")),
        _ts("created_at", nullable=False),
        _ts("expires_at", nullable=False),
        _ts("used_at"),
        _ts("revoked_at"),
    )
    op.create_table(
        "password_resets",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _user_fk(),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        _ts("created_at", nullable=False),
        _ts("expires_at", nullable=False),
        _ts("used_at"),
    )
    op.create_table(
        "setup_tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        _ts("created_at", nullable=False),
        _ts("expires_at", nullable=False),
        _ts("used_at"),
    )
    # Failed logins, shared by every collector on the database: the rate
    # limit counts rows of the last window per account and per source.
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(320), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        _ts("ts", nullable=False),
    )
    op.create_index("ix_login_failures_account", "login_failures", ["account", "ts"])
    op.create_index("ix_login_failures_source", "login_failures", ["source", "ts"])
    # The audit chain: one per project (project_id 0 is the instance's own
    # chain: users, projects, setup). Rows are appended under a lock on the
    # chain's head row, in the same transaction as the change they record.
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        _ts("ts", nullable=False),
        sa.Column("actor", sa.String(400), nullable=False),
        sa.Column("actor_user_id", sa.Integer),
        sa.Column("source", sa.String(64)),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("project_id", "seq", name="uq_audit_project_seq"),
    )
    op.create_index("ix_audit_project_ts", "audit_log", ["project_id", "ts"])
    op.create_table(
        "audit_heads",
        sa.Column("project_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        _ts("ts", nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_checkpoints_project", "audit_checkpoints", ["project_id", "seq"])


def downgrade() -> None:
    for table in ("audit_checkpoints", "audit_heads", "audit_log", "login_failures", "setup_tokens",
                  "password_resets", "invitations", "sessions", "memberships", "users"):
        op.drop_table(table)
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_index("ix_api_tokens_user")
