"""Landscape tables (DESIGN §4) in SQLAlchemy Core; portable across SQLite and PostgreSQL.

Audit events arrive from many bundles in any order, so event tables carry no foreign keys
(a token may land before its row); ``verify`` checks referential integrity instead.
Discipline enforced by the schema itself: a completed node_state has an output hash, a failed
one an error, both a duration; ``(token_id, node_id, attempt)`` is unique; a token has at
most one terminal outcome (partial unique index).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

SCHEMA_VERSION = 6  # bump on any change to the tables below, or to how ids are made (4: ordered ids; 5: audit_segments, composed ids; 6: runs.settings_path)

landscape_schema = Table("landscape_schema", metadata, Column("version", Integer, primary_key=True))

ID = String(64)
TS = String(40)  # ISO 8601 UTC, microseconds: sortable, portable

runs = Table(
    "runs",
    metadata,
    Column("run_id", ID, primary_key=True),
    Column("status", String(16), nullable=False),
    Column("started_at", TS, nullable=False),
    Column("completed_at", TS),
    Column("settings_json", Text, nullable=False),
    Column("settings_hash", String(64), nullable=False),
    Column("settings_path", Text),  # the settings file as the command was given it; NULL for settings from code
    Column("runner", String(64), nullable=False),
    Column("beam_options_json", Text, nullable=False),
    Column("summary_json", Text),
    Column("digest_root", String(64)),  # sha256 of digest_manifest: copy it elsewhere (auditlog/digest.py)
    Column("digest_manifest", Text),  # canonical JSON: per table, record count and root
)

nodes = Table(
    "nodes",
    metadata,
    Column("run_id", ID, ForeignKey("runs.run_id"), primary_key=True),
    Column("node_id", String(200), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("plugin_name", String(200), nullable=False),
    Column("node_type", String(16), nullable=False),
    Column("config_json", Text, nullable=False),
    Column("config_hash", String(64), nullable=False),
    Column("position", Integer, nullable=False),
)

edges = Table(
    "edges",
    metadata,
    Column("run_id", ID, ForeignKey("runs.run_id"), primary_key=True),
    Column("from_node", String(200), primary_key=True),
    Column("to_node", String(200), primary_key=True),
    Column("label", String(200), primary_key=True),
)

rows = Table(
    "rows",
    metadata,
    Column("row_id", ID, primary_key=True),
    Column("run_id", ID, nullable=False, index=True),
    Column("source_node_id", String(200), nullable=False),
    Column("row_index", Integer, nullable=False),
    Column("source_data_hash", String(64), nullable=False),
    Column("payload_json", Text),
    UniqueConstraint("run_id", "source_node_id", "row_index", name="uq_rows_index"),
)

tokens = Table(
    "tokens",
    metadata,
    Column("token_id", ID, primary_key=True),
    Column("run_id", ID, nullable=False, index=True),
    Column("row_id", ID, nullable=False, index=True),
    Column("branch_name", String(200)),
    Column("created_at_node", String(200), nullable=False),
    Column("created_at", TS, nullable=False),
)

token_parents = Table(
    "token_parents",
    metadata,
    Column("token_id", ID, primary_key=True),
    Column("parent_token_id", ID, primary_key=True),
    Column("ordinal", Integer, nullable=False),
    Index("ix_token_parents_parent", "parent_token_id"),
)

node_states = Table(
    "node_states",
    metadata,
    Column("state_id", ID, primary_key=True),
    Column("run_id", ID, nullable=False, index=True),
    Column("token_id", ID),  # looked up through uq_node_states_token_node_attempt's prefix
    Column("batch_id", ID),
    Column("node_id", String(200), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("input_hash", String(64)),
    Column("output_hash", String(64)),
    Column("duration_ms", Float),
    Column("error_json", Text),
    Column("started_at", TS, nullable=False),
    Column("completed_at", TS),
    UniqueConstraint("token_id", "node_id", "attempt", name="uq_node_states_token_node_attempt"),
    CheckConstraint("(token_id IS NULL) <> (batch_id IS NULL)", name="ck_node_states_subject"),
    CheckConstraint(
        "status <> 'completed' OR (output_hash IS NOT NULL AND duration_ms IS NOT NULL)",
        name="ck_node_states_completed",
    ),
    CheckConstraint(
        "status <> 'failed' OR (error_json IS NOT NULL AND duration_ms IS NOT NULL)",
        name="ck_node_states_failed",
    ),
    # indexes cost a random page per insert once the table outgrows the cache: only flushes
    # have a batch_id, so only they are indexed
    Index("ix_node_states_batch", "batch_id", sqlite_where=text("batch_id IS NOT NULL"), postgresql_where=text("batch_id IS NOT NULL")),
    # the writer asks "which states are still open?" on every write; usually none are
    Index("ix_node_states_open", "run_id", sqlite_where=text("status = 'open'"), postgresql_where=text("status = 'open'")),
)

routing_events = Table(
    "routing_events",
    metadata,
    Column("routing_id", ID, primary_key=True),
    Column("run_id", ID, nullable=False, index=True),
    Column("state_id", ID, nullable=False, index=True),
    Column("route_label", String(200), nullable=False),
    Column("destination", String(200), nullable=False),
    Column("mode", String(8), nullable=False),
    Column("reason_hash", String(64), nullable=False),
)

batches = Table(
    "batches",
    metadata,
    Column("batch_id", ID, primary_key=True),
    Column("run_id", ID, nullable=False, index=True),
    Column("aggregation_node_id", String(200), nullable=False),
    Column("key", Text, nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("trigger_type", String(16)),
    Column("trigger_reason", Text),
    Column("aggregation_state_id", ID),
    Column("retry_of_batch_id", ID),
    Column("created_at", TS, nullable=False),
    Column("completed_at", TS),
)

batch_members = Table(
    "batch_members",
    metadata,
    Column("batch_id", ID, primary_key=True),
    Column("run_id", ID, nullable=False, index=True),
    Column("token_id", ID, primary_key=True),
    Column("ordinal", Integer, nullable=False),
)

batch_outputs = Table(
    "batch_outputs",
    metadata,
    Column("batch_id", ID, primary_key=True),
    Column("run_id", ID, nullable=False, index=True),
    Column("token_id", ID, primary_key=True),
    Column("ordinal", Integer, nullable=False),
    Column("token_json", Text),
)

token_outcomes = Table(
    "token_outcomes",
    metadata,
    Column("outcome_id", ID, primary_key=True),
    Column("run_id", ID, nullable=False, index=True),
    Column("token_id", ID, nullable=False, index=True),
    Column("outcome", String(24), nullable=False),
    Column("is_terminal", Boolean, nullable=False),
    Column("node_id", String(200), nullable=False),
    Column("sink_name", String(200)),
    Column("error_json", Text),
    Column("artifact_id", ID),
    Column("artifact_row", Integer),
    Column("token_json", Text),
    Column("recorded_at", TS, nullable=False),
    Index(
        "uq_token_outcomes_terminal",
        "token_id",
        unique=True,
        sqlite_where=text("is_terminal"),
        postgresql_where=text("is_terminal"),
    ),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("artifact_id", ID, primary_key=True),
    Column("run_id", ID, nullable=False, index=True),
    Column("sink_node_id", String(200), nullable=False),
    Column("path", Text, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("row_count", Integer, nullable=False),
    Column("artifact_kind", String(8), nullable=False),
    Column("created_at", TS, nullable=False),
)

audit_segments = Table(
    "audit_segments",
    metadata,
    Column("segment_id", String(200), primary_key=True),  # the segment's name (auditlog/segments.py)
    Column("run_id", ID, nullable=False, index=True),
    Column("node_id", String(200), nullable=False),
    Column("attempt_tag", String(16), nullable=False),  # which write of the work committed last (random)
    Column("records", Integer, nullable=False),
    Column("loaded_at", TS, nullable=False),
)
"""The audit log's segments loaded into this Landscape: a segment loads in the transaction that
writes this row, so none is loaded twice and resume knows which are still to load."""

record_digests = Table(
    "record_digests",
    metadata,
    Column("run_id", ID, primary_key=True),
    Column("table_name", String(64), primary_key=True),
    Column("chunk", Integer, primary_key=True),
    Column("entries", Text, nullable=False),  # canonical JSON [[record_key, record_hash], …], primary-key order
)
"""Every audit record's hash, written when its run finishes, so ``verify`` can name the record
that changed (auditlog/digest.py); chunks of records, not a row each, keep it small and fast."""
