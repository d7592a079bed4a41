"""The state database's tables, as the newest migration leaves them (``migrations/versions``).

Contents (a file's bytes, a skill's code) are stored sealed (:class:`~conduit.state.database.Sealer`); what
Conduit must query (owners, paths, sizes, names, schemas) is stored as it is.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, LargeBinary, MetaData, String, Table, Text

METADATA = MetaData()

workspace_owners = Table(
    "workspace_owners",
    METADATA,
    Column("principal", String(255), primary_key=True),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("files", Integer, nullable=False, default=0),
)
"""One row per principal with a workspace: its totals, and the row a write locks (one writer per principal)."""

workspace_files = Table(
    "workspace_files",
    METADATA,
    Column("principal", String(255), primary_key=True),
    # SHA-256 of the normalised path (a path may be longer than an index entry).
    Column("digest", String(64), primary_key=True),
    Column("path", Text, nullable=False),
    # text or base64: how it was written, and so how it is read.
    Column("encoding", String(8), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("modified_ms", BigInteger, nullable=False),
    # Sealed.
    Column("content", LargeBinary, nullable=False),
)

skills = Table(
    "skills",
    METADATA,
    Column("owner", String(255), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("description", Text, nullable=False),
    Column("language", String(16), nullable=False),
    # Sealed.
    Column("code", LargeBinary, nullable=False),
    Column("input_schema", Text, nullable=True),
    Column("output_schema", Text, nullable=True),
    # JSON: a list of allowlist patterns, or null (the caller's allowlist alone).
    Column("allowed_tools", Text, nullable=True),
    Column("saved_ms", BigInteger, nullable=False),
)
