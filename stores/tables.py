"""The store's keyed tables besides the chunks: their names, key columns and value columns.

The catalog (the live SQLite database) and every segment's rows file hold these tables; a
segment holds the rows set and the keys removed in its checkpoint interval. Plain data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    name: str
    key: tuple[str, ...]
    values: tuple[str, ...]
    # Columns added after stores were written without them: the SQL value their older rows read as.
    added: tuple[tuple[str, str], ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return self.key + self.values

    def selected(self, present: set[str]) -> list[str]:
        """SQL expressions reading this table's columns from a copy that holds only `present` (an older one)."""
        defaults = dict(self.added)
        return [column if column in present else defaults[column] for column in self.columns]


# metadata: the source's own fields of the document (a wiki page's namespace, a CRM record's id), a JSON object.
DOCUMENTS = Table("documents", ("source", "document"), ("version", "title", "location", "modified", "chunks", "metadata"),
                  added=(("metadata", "'{}'"),))
CURSORS = Table("cursors", ("source",), ("value",))
BASELINES = Table("baselines", ("source", "run_id"), ("created_at", "stats"))
RETRY_QUEUE = Table("retry_queue", ("source", "document"),
                    ("ref", "reason", "attempts", "first_failed", "last_failed"))
PROPERTIES = Table("properties", ("key",), ("value",))
TABLES = (DOCUMENTS, CURSORS, BASELINES, RETRY_QUEUE, PROPERTIES)
BY_NAME = {table.name: table for table in TABLES}

# A chunk row as segments and the catalog keep it (its vector apart).
CHUNK_COLUMNS = ("faiss_id", "chunk_id", "source", "document", "position", "text", "content_hash", "page",
                 "last_page", "tokens", "ocr")
