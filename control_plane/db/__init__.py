"""Persistence: flag set versions, audit events and API tokens, on SQLite or PostgreSQL.

`Database.from_url(settings.database_url)` builds the engine (no connection yet);
`database.migrate()` brings the schema to the packaged Alembic head; `repository` holds every
query. Nothing here is created at import time.
"""

# experiment_models registers the experiment and canary tables on Base (the whole schema).
from control_plane.db import experiment_models  # noqa: F401
from control_plane.db.engine import Database
from control_plane.db.models import ApiToken, AuditEvent, Base, FlagSetVersion

__all__ = ["ApiToken", "AuditEvent", "Base", "Database", "FlagSetVersion"]
