"""Encounter records: sites, users, encounters and their codes, audit log, program settings.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Written out in full, not imported from the models: a migration must keep creating the schema
it created on the day it was written, whatever the models become later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _encounter_child(name: str, key: str, *elements: sa.schema.SchemaItem) -> None:
    """A table of one kind of code per encounter, gone when its encounter is purged."""
    op.create_table(
        name,
        sa.Column("encounter_id", sa.Integer(), nullable=False),
        *elements,
        sa.ForeignKeyConstraint(
            ["encounter_id"],
            ["encounters.id"],
            name=op.f(f"fk_{name}_encounter_id_encounters"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("encounter_id", key, name=op.f(f"pk_{name}")),
    )


def upgrade() -> None:
    op.create_table(
        "program_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=True),
        sa.Column("keep_narratives", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_program_settings_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_program_settings")),
    )
    op.create_table(
        "sites",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sites")),
        sa.UniqueConstraint("name", name=op.f("uq_sites_name")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("session_epoch", sa.Integer(), server_default="0", nullable=False),
        sa.CheckConstraint("role IN ('worker', 'supervisor', 'admin')", name=op.f("ck_users_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "user_sites",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["sites.id"],
            name=op.f("fk_user_sites_site_id_sites"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_sites_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "site_id", name=op.f("pk_user_sites")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("detail", sa.String(length=400), server_default="", nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_audit_log_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"])
    op.create_index(op.f("ix_audit_log_user_id"), "audit_log", ["user_id"])
    op.create_table(
        "encounters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.Integer(), nullable=False),
        sa.Column("risk_level", sa.String(length=16), nullable=True),
        sa.Column("follow_up", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("narrative", sa.Text(), nullable=True),
        sa.Column("knowledge_version", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_encounters_site_id_sites")
        ),
        sa.ForeignKeyConstraint(
            ["worker_id"], ["users.id"], name=op.f("fk_encounters_worker_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_encounters")),
    )
    op.create_index("ix_encounters_day", "encounters", ["day"])
    op.create_index("ix_encounters_site_day", "encounters", ["site_id", "day"])
    op.create_index("ix_encounters_worker_day", "encounters", ["worker_id", "day"])
    _encounter_child(
        "encounter_codes", "code", sa.Column("code", sa.String(length=80), nullable=False)
    )
    op.create_index("ix_encounter_codes_code", "encounter_codes", ["code"])
    _encounter_child(
        "encounter_strategies",
        "strategy",
        sa.Column("strategy", sa.String(length=80), nullable=False),
    )
    _encounter_child(
        "encounter_supplies",
        "kind",
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.CheckConstraint("count > 0", name=op.f("ck_encounter_supplies_count_positive")),
    )
    _encounter_child(
        "encounter_referrals", "kind", sa.Column("kind", sa.String(length=40), nullable=False)
    )


def downgrade() -> None:
    for table in (
        "encounter_referrals",
        "encounter_supplies",
        "encounter_strategies",
        "encounter_codes",
        "encounters",
        "audit_log",
        "user_sites",
        "users",
        "sites",
        "program_settings",
    ):
        op.drop_table(table)
