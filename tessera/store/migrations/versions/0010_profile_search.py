"""profiles: the people search's index

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 10:00:00

`profile_search` holds each surviving profile's summary and index terms (the batch stage in
`profiles/search_index.py` keeps it). What indexes the terms is each backend's own, so it is
created here rather than declared in the models (`models.SEARCH_INDEX_OBJECTS` keeps schema
comparisons from reporting it):

- SQLite: an FTS5 table over the terms, with `profile_search` as its external content and
  triggers that keep the two in step (so a plain DELETE, as rebuild and unmerge issue, also
  leaves the index). The `ascii` tokenizer with `:` as a token character splits the terms
  on spaces only, exactly as `search_terms.py` wrote them. `detail=none` keeps no
  positions (no phrase is ever asked for) and `columnsize=0` no sizes (no ranking by
  relevance): the index is a fraction of the size. Prefix indexes of 3 to 10 characters
  (a namespace such as `p:` and one to eight letters) make a prefix one doclist, read in
  row-id order and only as far as a page needs; a prefix without one is answered by
  merging the doclists of every term it begins first, which for a broad one (`gmail`,
  a single letter) is most of the store (~40 ms at 100,000 profiles).
- PostgreSQL: a generated column `document`, the terms as a tsvector (`array_to_tsvector`:
  each term a lexeme as written, no parser or dictionary), and a GIN index over it, which
  answers prefix queries (`'p:smi':*`) as the FTS5 index does, with the same terms and no
  extension. A trigram index (pg_trgm) would answer substrings too, but finds word starts
  only through a recheck of every candidate row, and needs the extension installed on the
  server.

The rows of an existing store are filled in here, from its profiles as they are.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

FTS5_TABLE = """
CREATE VIRTUAL TABLE profile_search_fts USING fts5(
    terms,
    content='profile_search',
    content_rowid='seq',
    tokenize="ascii tokenchars ':'",
    detail=none,
    columnsize=0,
    prefix='3 4 5 6 7 8 9 10'
)
"""
FTS5_TRIGGERS = (
    """
    CREATE TRIGGER profile_search_fts_insert AFTER INSERT ON profile_search BEGIN
        INSERT INTO profile_search_fts (rowid, terms) VALUES (new.seq, new.terms);
    END
    """,
    """
    CREATE TRIGGER profile_search_fts_delete AFTER DELETE ON profile_search BEGIN
        INSERT INTO profile_search_fts (profile_search_fts, rowid, terms)
        VALUES ('delete', old.seq, old.terms);
    END
    """,
    """
    CREATE TRIGGER profile_search_fts_update AFTER UPDATE ON profile_search BEGIN
        INSERT INTO profile_search_fts (profile_search_fts, rowid, terms)
        VALUES ('delete', old.seq, old.terms);
        INSERT INTO profile_search_fts (rowid, terms) VALUES (new.seq, new.terms);
    END
    """,
)
GIN_INDEX = (
    # The terms as a tsvector, kept by PostgreSQL itself: an expression index alone would
    # serve the index scan, but a plan that reads rows newest first and tests each (when
    # most rows match) would rebuild the tsvector from the text for every row, 5-15x the
    # cost of reading this column.
    "ALTER TABLE profile_search ADD COLUMN document tsvector "
    "GENERATED ALWAYS AS (array_to_tsvector(string_to_array(terms, ' '))) STORED",
    "CREATE INDEX ix_profile_search_document ON profile_search USING gin (document)",
    # The planner chooses between this index (few matches: fetch them all, sort, take a
    # page) and reading rows newest first until a page is full (most rows match) by how
    # common it takes the terms to be. The default statistics keep the 1,000 commonest
    # terms, so a term seen once in a million looked as common as the 1,000th and, under
    # a LIMIT, the planner walked the whole table for it (~0.7 s at 100,000 profiles);
    # ANALYZE then reads more rows, once in a while, in the background.
    "ALTER TABLE profile_search ALTER COLUMN document SET STATISTICS 10000",
)


def upgrade() -> None:
    op.create_table(
        "profile_search",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("profile_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("email", sa.String(length=255), nullable=True),
        sa.Column("phone", sa.String(length=255), nullable=True),
        sa.Column("company", sa.String(length=255), nullable=True),
        sa.Column("terms", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_profile_search")),
    )
    op.create_index("ix_profile_search_profile_id", "profile_search", ["profile_id"], unique=True)
    if op.get_bind().dialect.name == "postgresql":
        for statement in GIN_INDEX:
            op.execute(statement)
    else:
        op.execute(FTS5_TABLE)
        for trigger in FTS5_TRIGGERS:
            op.execute(trigger)

    from tessera.profiles.search_index import index_all_profiles

    index_all_profiles(op.get_bind())


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        for name in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS profile_search_fts_{name}")
        op.execute("DROP TABLE IF EXISTS profile_search_fts")
    op.drop_table("profile_search")
