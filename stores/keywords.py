"""The keyword index: SQLite FTS5 (BM25) over the text of the catalog's live chunks.

An external-content FTS5 table over `chunks`: it stores only its inverted index, not a second copy of the text,
and triggers on `chunks` keep it in the very transaction that inserts or removes a row, so it is never out of
step with the chunks it indexes and a write costs the index entries of the rows it changes (a seal or merge,
which only sets `segment`, touches it not at all). Segments carry the chunk text, so a restore, which inserts
the rows again, rebuilds it; a store written before it gets it at its next writable open (`migrate`).

User text never reaches FTS5's query syntax: each whitespace-separated term becomes a quoted phrase (quotes
doubled), so `INV-2024-00417` matches its tokens in order and `"`, `NEAR(` or `AND` are plain words.

A keyword search matches any term of the query (BM25 ranks). The keyword side of a hybrid search is stricter, as
measured by benchmarks/search_quality.py: chunks holding every term of the query, else every term that names
something (an identifier, a code, a name); else nothing, so that a question asked in other words, whose common
words match chunks at random, is ranked by its meaning alone instead of being diluted by that noise.
"""

from __future__ import annotations

import re
import sqlite3

TABLE = "chunks_fts"
# porter: a question's "refunds" finds a chunk's "refund"; unicode61 splits INV-2024-00417 into inv, 2024, 00417.
TOKENIZER = "porter unicode61 remove_diacritics 2"
STATEMENTS = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5(text, content='chunks', content_rowid='row', "
    f"tokenize='{TOKENIZER}')",
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_insert AFTER INSERT ON chunks BEGIN "
    f"INSERT INTO {TABLE}(rowid, text) VALUES (new.row, new.text); END",
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_delete AFTER DELETE ON chunks BEGIN "
    f"INSERT INTO {TABLE}({TABLE}, rowid, text) VALUES ('delete', old.row, old.text); END",
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_update AFTER UPDATE OF row, text ON chunks BEGIN "
    f"INSERT INTO {TABLE}({TABLE}, rowid, text) VALUES ('delete', old.row, old.text); "
    f"INSERT INTO {TABLE}(rowid, text) VALUES (new.row, new.text); END",
)
MAX_TERMS = 64  # a pasted page is not a keyword query: its first terms are
_WORD = re.compile(r"\w")


class KeywordIndexMissing(LookupError):
    """A catalog written before the keyword index and not opened writable since (read-only readers cannot build it)."""


def present(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone() is not None


def migrate(db: sqlite3.Connection) -> bool:
    """Create the index and its triggers if missing, and index every stored chunk once (in one transaction, with
    the catalog otherwise unchanged); True when it was built now."""
    if present(db):
        return False
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in STATEMENTS:
            db.execute(statement)
        db.execute(f"INSERT INTO {TABLE}({TABLE}) VALUES ('rebuild')")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return True


def _words(text: str) -> list[str]:
    """The text's words; a NUL separates words too (SQLite ends a query string at one)."""
    return text.replace("\x00", " ").split()


def _terms(text: str) -> list[str]:
    return list(dict.fromkeys(term for term in _words(text) if _WORD.search(term)))[:MAX_TERMS]


def _quoted(terms: list[str], operator: str) -> str | None:
    return f" {operator} ".join('"' + term.replace('"', '""') + '"' for term in terms) or None


def any_term(text: str) -> str | None:
    """An FTS5 query matching any of the text's terms (BM25 ranks chunks holding more, and rarer, ones first), each
    term a quoted phrase; None when the text holds no word at all. The keyword mode's query."""
    return _quoted(_terms(text), "OR")


def every_term(text: str) -> str | None:
    """An FTS5 query matching the chunks that hold every term of the text."""
    return _quoted(_terms(text), "AND")


def named_terms(text: str) -> str | None:
    """An FTS5 query matching the chunks that hold every term of the text that names something: a term with a digit
    (INV-2024-00417, E1234, 0x80040154), a capital after its first letter (SKU-BK, TLS, McAllister), or a
    capitalised word inside a sentence (a name: "orders of Marta Kowalczyk"); None when it has none."""
    named, starts_sentence = [], True
    for term in _words(text):
        if _WORD.search(term):
            word = term.strip("\"'()[]{}<>,;:.!?")
            if any(c.isdigit() for c in word) or any(c.isupper() for c in word[1:]) or (
                    len(word) > 1 and word[:1].isupper() and not starts_sentence):
                named.append(term)
        starts_sentence = term.endswith((".", "?", "!", ":"))
    return _quoted(list(dict.fromkeys(named))[:MAX_TERMS], "AND")
