"""Alembic's environment for Conduit's state database: migrations run on the connection Conduit hands over
(``config.attributes["connection"]``, see :func:`conduit.state.database.migrate`), never from a URL here."""

from __future__ import annotations

from alembic import context

from conduit.state.tables import METADATA

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=METADATA, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
