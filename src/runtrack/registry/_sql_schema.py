"""The tables of `SQLRunRegistry`, and the conversions between runs and rows."""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler

from runtrack._clock import dt_to_us, us_to_dt
from runtrack._models import MAX_ID_LENGTH, Run, trusted_run
from runtrack._status import RunStatus
from runtrack.registry._sql_idempotency import add_idempotency_table
from runtrack.registry._sql_managers import add_manager_tables
from runtrack.registry.base import MUTABLE_FIELDS, TIME_FIELDS, stored_run

__all__ = [
    "ALL_COLUMNS",
    "QUEUED_LITERAL",
    "SCHEMA_VERSION",
    "WRITABLE_COLUMNS",
    "RowStatement",
    "Tables",
    "chunks",
    "columns_from_changes",
    "row_from_driver",
    "row_from_run",
    "row_from_stored",
    "rows_json",
    "run_from_row",
    "status_values",
    "upgrade",
]

#: The version of the table layout this module creates and reads (2: the managers table
#: and the runs' index by owner; 3: the durable-task columns and their indexes; 4:
#: ``not_before`` and the claim index that serves the claim's order; 5: the indexes by
#: owner, dead and group partial on PostgreSQL and SQLite; each brought to an older schema
#: on first use, see `upgrade`).
SCHEMA_VERSION: Final = 5

#: Rows per IN (...) list: well under every driver's bound-parameter limit.
_CHUNK: Final = 500

_JSON_COLUMNS: Final = frozenset({"parameters", "tags", "result", "args"})
#: The columns of a new run that no write changes afterwards (besides run_id and name).
_INSERT_ONLY: Final = (
    "created_at",
    "parameters",
    "run_group",
    "task",
    "args",
    "idempotency_key",
    "requeued_from",
    "requeue_on_interrupt",
    "not_before",
)
#: The columns version 3 added to the runs table.
_V3_COLUMNS: Final = (
    "task",
    "args",
    "idempotency_key",
    "dead",
    "requeued_from",
    "requeue_on_interrupt",
)
#: The columns version 4 added to the runs table.
_V4_COLUMNS: Final = ("not_before",)
#: The reflected option that makes an index partial (`upgrade` rebuilds a whole one).
_WHERE: Final = frozenset({"postgresql_where", "sqlite_where"})
#: The claim index of version 3, which `upgrade` replaces with `Tables.runs_claimable`.
_V3_CLAIM_INDEX: Final = "runs_claim"
#: The QUEUED status as a literal, not a bound parameter: the claim index's predicate
#: (status = 'queued' AND owner IS NULL) and the claim's WHERE spell it alike, so that
#: PostgreSQL and SQLite can prove that the partial index holds every row a claim wants.
QUEUED_LITERAL: Final[sa.ColumnElement[str]] = sa.literal_column(f"'{RunStatus.QUEUED.value}'")
#: The columns a write may change: the status plus every `MUTABLE_FIELDS` field.
WRITABLE_COLUMNS: Final = ("status", *sorted(MUTABLE_FIELDS))
#: Every column of the runs table.
ALL_COLUMNS: Final = ("run_id", "name", *_INSERT_ONLY, *WRITABLE_COLUMNS)

_Text = sa.Text().with_variant(mysql.LONGTEXT(), "mysql")
_Ident = sa.String(MAX_ID_LENGTH)


class Tables:
    """The registry's tables, named with its prefix."""

    managers: sa.Table
    runs_owner: sa.Index
    #: Index added by version 3 (created on an older schema by `upgrade`; partial on
    #: PostgreSQL and SQLite since version 5, like `runs_group` and `runs_owner`).
    runs_dead: sa.Index
    runs_group: sa.Index
    #: The claim index of version 4 (MariaDB/MySQL: `runs_claimable_mysql`), created on an
    #: older schema by `upgrade`, which drops the claim index of version 3.
    runs_claimable: sa.Index
    runs_claimable_mysql: sa.Index
    #: The idempotency keys (see `_sql_idempotency`).
    idempotency: sa.Table

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.metadata = sa.MetaData()
        options: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}
        self.runs = sa.Table(
            f"{prefix}runs",
            self.metadata,
            sa.Column("run_id", _Ident, primary_key=True),
            sa.Column("name", _Ident, nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("created_at", sa.BigInteger, nullable=False),
            sa.Column("started_at", sa.BigInteger),
            sa.Column("finished_at", sa.BigInteger),
            sa.Column("parameters", sa.JSON, nullable=False),
            sa.Column("tags", sa.JSON, nullable=False),
            # "group" is a reserved word in every SQL dialect
            sa.Column("run_group", _Ident),
            sa.Column("priority", sa.BigInteger, nullable=False),
            sa.Column("timeout", sa.Double),
            sa.Column("attempt", sa.BigInteger, nullable=False),
            sa.Column("max_attempts", sa.BigInteger, nullable=False),
            sa.Column("progress", sa.Double),
            sa.Column("progress_message", _Text),
            sa.Column("result", sa.JSON(none_as_null=True)),
            sa.Column("error_type", _Text),
            sa.Column("error_message", _Text),
            sa.Column("owner", _Text),
            sa.Column("heartbeat_at", sa.BigInteger),
            sa.Column("task", _Ident),
            sa.Column("args", sa.JSON(none_as_null=True)),
            sa.Column("idempotency_key", _Ident),
            sa.Column("dead", sa.Boolean, nullable=False, server_default=sa.false()),
            sa.Column("requeued_from", _Ident),
            sa.Column(
                "requeue_on_interrupt", sa.Boolean, nullable=False, server_default=sa.false()
            ),
            sa.Column("not_before", sa.BigInteger),
            sa.Index(f"{prefix}runs_created", "created_at", "run_id"),
            sa.Index(f"{prefix}runs_status", "status", "created_at"),
            sa.Index(f"{prefix}runs_name", "name", "created_at"),
            **options,
        )
        self.tags = sa.Table(
            f"{prefix}tags",
            self.metadata,
            sa.Column(
                "run_id",
                _Ident,
                sa.ForeignKey(self.runs.c.run_id, ondelete="CASCADE"),
                primary_key=True,
            ),
            sa.Column("key", _Ident, primary_key=True),
            sa.Column("value", _Ident, nullable=False),
            sa.Index(f"{prefix}tags_pair", "key", "value", "run_id"),
            **options,
        )
        self.output = sa.Table(
            f"{prefix}output",
            self.metadata,
            sa.Column(
                "run_id",
                _Ident,
                sa.ForeignKey(self.runs.c.run_id, ondelete="CASCADE"),
                primary_key=True,
            ),
            sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("stream", sa.String(64), nullable=False),
            sa.Column("text", _Text, nullable=False),
            sa.Column("at", sa.BigInteger, nullable=False),
            **options,
        )
        self.schema = sa.Table(
            f"{prefix}schema",
            self.metadata,
            sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("applied_at", sa.BigInteger, nullable=False),
            **options,
        )
        add_manager_tables(self, prefix)
        add_idempotency_table(self, prefix)
        runs = self.runs
        # A claim reads the unclaimed QUEUED runs of a task in the claim's own order
        # (priority DESC, created_at, run_id) and stops after its LIMIT: no sort, and no
        # claimed or finished run on the way. PostgreSQL and SQLite index those rows only
        # (a partial index); MariaDB/MySQL has no partial indexes, so status and owner lead
        # (owner is a TEXT column there: a prefix of it, enough for "owner IS NULL").
        unclaimed = sa.and_(runs.c.status == QUEUED_LITERAL, runs.c.owner.is_(None))
        self.runs_claimable = sa.Index(
            f"{prefix}runs_claimable",
            runs.c.task,
            runs.c.priority.desc(),
            runs.c.created_at,
            runs.c.run_id,
            postgresql_where=unclaimed,
            sqlite_where=unclaimed,
        ).ddl_if(dialect=("postgresql", "sqlite"))  # type: ignore[arg-type]  # documented
        self.runs_claimable_mysql = sa.Index(
            f"{prefix}runs_claimable",
            runs.c.task,
            runs.c.status,
            sa.text("owner(1)"),  # mysql_length cannot go with priority DESC
            runs.c.priority.desc(),
            runs.c.created_at,
            runs.c.run_id,
        ).ddl_if(dialect="mysql")
        # Few runs are dead letters or in a group: PostgreSQL and SQLite index only those
        # (an index entry less for every other run's insert and each of its updates).
        dead = runs.c.dead == sa.true()  # as `list_runs(dead=True)` spells it
        self.runs_dead = _partial(f"{prefix}runs_dead", runs.c.dead, runs.c.created_at, dead)
        grouped = runs.c.run_group.is_not(None)
        self.runs_group = _partial(
            f"{prefix}runs_group", runs.c.run_group, runs.c.created_at, grouped
        )
        # write_batch sends each kind of row with one statement:
        # - PostgreSQL: the whole batch as one JSON parameter, unpacked by the server into
        #   rows of the table's own type (INSERT ... SELECT, UPDATE ... FROM): no value to
        #   encode per row and column, and the parsing runs on the database's CPU;
        # - MySQL/MariaDB: the changed rows as a multi-row INSERT ... ON DUPLICATE KEY UPDATE
        #   of the full rows (locked, so they exist): executemany would send one UPDATE per
        #   row;
        # - elsewhere (SQLite): an executemany of one uniform full-row UPDATE.
        self.insert_runs = runs.insert()
        self.insert_tags = self.tags.insert()
        self.update_many = runs.update().where(runs.c.run_id == sa.bindparam("u_run_id"))
        table = _quoted(runs.name)
        columns = ", ".join(_quoted(name) for name in ALL_COLUMNS)
        rows_param = sa.bindparam("rows", type_=sa.Text)
        source = f"json_populate_recordset(NULL::{table}, CAST(:rows AS json))"
        self.insert_json = sa.text(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {source}"
        ).bindparams(rows_param)
        self._table_sql, self._source, self._rows_param = table, source, rows_param
        self._updates: dict[tuple[str, ...], sa.TextClause] = {}
        # PostgreSQL locks a batch's rows with one array parameter, not a 500-item IN list,
        # and reads only their status and owner (see `RunWrite.owner`): the writes then set
        # just the columns they change.
        self.lock_any = (
            sa.select(runs.c.run_id, runs.c.status, runs.c.owner)
            .where(runs.c.run_id == sa.any_(sa.bindparam("ids", type_=postgresql.ARRAY(sa.Text))))
            .order_by(runs.c.run_id)
            .with_for_update()
        )
        upsert = mysql.insert(runs)
        self.upsert_mysql = upsert.on_duplicate_key_update(
            {name: upsert.inserted[name] for name in WRITABLE_COLUMNS}
        )

    def update_json(self, columns: tuple[str, ...]) -> sa.TextClause:
        """PostgreSQL: ``UPDATE`` of ``columns`` from a JSON array of rows (see `rows_json`)."""
        statement = self._updates.get(columns)
        if statement is None:
            table = self._table_sql
            assignments = ", ".join(f"{_quoted(n)} = new.{_quoted(n)}" for n in columns)
            statement = self._updates[columns] = sa.text(
                f"UPDATE {table} SET {assignments} FROM {self._source} AS new "
                f'WHERE {table}."run_id" = new."run_id"'
            ).bindparams(self._rows_param)
        return statement

    def use_collation(self, dialect: Dialect) -> None:
        """Compare strings exactly on MySQL/MariaDB (case, accents and trailing spaces)."""
        if dialect.name != "mysql":
            return
        version = dialect.server_version_info or ()
        if getattr(dialect, "is_mariadb", False):
            collation = "utf8mb4_nopad_bin"
        elif version >= (8, 0, 17):
            collation = "utf8mb4_0900_bin"
        else:
            collation = "utf8mb4_bin"
        for table in self.metadata.tables.values():
            table.dialect_kwargs["mysql_collate"] = collation


def _partial(
    name: str, first: sa.Column[Any], then: sa.Column[Any], where: sa.ColumnElement[bool]
) -> sa.Index:
    """An index of the rows ``where`` holds on PostgreSQL and SQLite, of all on MySQL."""
    return sa.Index(name, first, then, postgresql_where=where, sqlite_where=where)


def upgrade(conn: sa.Connection, tables: Tables) -> None:
    """Bring an older schema's runs table up to this version (run with ``run_sync``).

    Adds the version 3 and 4 columns a table created by an earlier version lacks
    (existing rows get NULL, or false for the flags) and the indexes of versions 2 to 4,
    drops the claim index of version 3, which version 4's replaces (it serves an older
    version's claims as well), and on PostgreSQL and SQLite rebuilds the indexes by owner,
    dead and group as the partial indexes of version 5 (which serve the same queries).
    An older runtrack still reads and writes the table (it ignores the new columns), but
    claims runs delayed by ``not_before`` early.
    """
    runs = tables.runs
    inspector = sa.inspect(conn)
    present = {column["name"] for column in inspector.get_columns(runs.name)}
    quote = conn.dialect.identifier_preparer.quote
    for name in (*_V3_COLUMNS, *_V4_COLUMNS):
        if name in present:
            continue
        column = runs.c[name]
        ddl = f"ALTER TABLE {quote(runs.name)} ADD COLUMN {quote(name)} "
        ddl += column.type.compile(dialect=conn.dialect)
        if not column.nullable:
            ddl += " NOT NULL DEFAULT " + ("false" if conn.dialect.name == "postgresql" else "0")
        conn.exec_driver_sql(ddl)
    mysql = conn.dialect.name == "mysql"
    claimable = tables.runs_claimable_mysql if mysql else tables.runs_claimable
    present_indexes = {index["name"]: index for index in inspector.get_indexes(runs.name)}
    partial = (tables.runs_owner, tables.runs_dead, tables.runs_group)
    if not mysql:  # version 5: these are partial; an older schema has them whole
        for index in partial:
            found = present_indexes.get(str(index.name))
            if found is not None and not found.get("dialect_options", {}).keys() & _WHERE:
                conn.exec_driver_sql(f"DROP INDEX {quote(str(index.name))}")
    for index in (*partial, claimable):
        index.create(conn, checkfirst=True)
    old = tables.prefix + _V3_CLAIM_INDEX
    if old in present_indexes:
        on = f" ON {quote(runs.name)}" if mysql else ""
        conn.exec_driver_sql(f"DROP INDEX {quote(old)}{on}")


def _quoted(identifier: str) -> str:
    """A PostgreSQL identifier in double quotes (ours hold letters, digits and _ only)."""
    return f'"{identifier}"'


def rows_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as the JSON parameter of `Tables.insert_json` and `Tables.update_json`.

    A None is left out: the statements read a missing key as NULL, and the database
    parses half the text.

    Raises:
        ValueError: a float is NaN or infinite (`Run` validation keeps them out).
    """
    return _dumps_rows([{k: v for k, v in row.items() if v is not None} for row in rows])


_dumps_rows: Final = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":")
).encode


def row_from_run(run: Run) -> dict[str, Any]:
    """A run as a row of the runs table (timestamps in microseconds)."""
    return row_from_stored(stored_run(run))


def row_from_stored(run: Mapping[str, Any]) -> dict[str, Any]:
    """A run in stored form (see `stored_run`) as a row of the runs table."""
    row = dict(run)
    row["run_group"] = row.pop("group")
    row["status"] = RunStatus(row["status"]).value
    row["parameters"] = dict(row["parameters"] or {})
    row["tags"] = dict(row["tags"] or {})
    return row


def row_from_driver(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A row read without SQLAlchemy's types: JSON columns parsed from their text."""
    values = dict(row)
    for name in _JSON_COLUMNS:
        text = values.get(name)
        # SQLite gives a JSON number back as a number (its JSON columns have numeric affinity).
        if isinstance(text, str | bytes):
            values[name] = json.loads(text)
    return values


def columns_from_changes(changes: Mapping[str, Any]) -> Mapping[str, Any]:
    """Validated changes as column values: datetimes become microseconds.

    Returns ``changes`` itself when nothing needs converting (the manager's writes carry
    microseconds already).
    """
    columns: dict[str, Any] | None = None
    for field, value in changes.items():
        if isinstance(value, datetime):
            if columns is None:
                columns = dict(changes)
            columns[field] = dt_to_us(value)
    return changes if columns is None else columns


def run_from_row(row: Mapping[Any, Any], *, trusted: bool = False) -> Run:
    """The `Run` a full row of the runs table holds.

    ``trusted``: a row this version wrote and just read back, not validated again (claims
    read hundreds of rows per call).
    """
    data = dict(row)
    data["group"] = data.pop("run_group")
    for field in TIME_FIELDS:
        if data[field] is not None:
            data[field] = us_to_dt(data[field])
    data["parameters"] = data["parameters"] or {}
    data["tags"] = data["tags"] or {}
    if trusted:
        data["status"] = RunStatus(data["status"])
        data["dead"] = bool(data["dead"])
        data["requeue_on_interrupt"] = bool(data["requeue_on_interrupt"])
        return trusted_run(data)
    return Run.model_validate(data)


class RowStatement:
    """A many-row statement compiled once for a dialect and sent with plain tuples.

    ``executemany`` through SQLAlchemy processes every value of every row (JSON, types);
    for a batch of hundreds of rows that costs more than the database does. The rows are
    converted here once (JSON as text, the way SQLAlchemy's JSON type writes it) and the
    driver receives the compiled SQL with a list of tuples. ``columns`` limits the columns
    an INSERT or UPDATE sets (default: all of them).
    """

    __slots__ = ("_json", "_values", "sql")

    def __init__(
        self,
        statement: sa.ClauseElement,
        dialect: Dialect,
        columns: Sequence[str] | None = None,
    ) -> None:
        compiled = statement.compile(
            dialect=dialect, column_keys=None if columns is None else list(columns)
        )
        positions = compiled.positiontup if isinstance(compiled, SQLCompiler) else None
        if positions is None:
            raise TypeError(f"{dialect.name}: RowStatement needs a positional paramstyle")
        self.sql = str(compiled)
        # "u_run_id" binds the WHERE of an UPDATE; every other bind is a column.
        keys = [key.removeprefix("u_") for key in positions]
        self._values = operator.itemgetter(*keys)
        self._json = [i for i, key in enumerate(keys) if key in _JSON_COLUMNS]

    def params(self, rows: Iterable[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """Each row's values in bind order."""
        out: list[tuple[Any, ...]] = []
        for row in rows:
            values = list(self._values(row))
            for i in self._json:
                values[i] = _json_text(values[i])
            out.append(tuple(values))
        return out


_dumps: Final = json.JSONEncoder().encode  # what SQLAlchemy's JSON type writes
#: The JSON text of empty values, by type (None stays NULL).
_EMPTY_JSON: Final[dict[type, str]] = {
    dict: "{}",
    list: "[]",
    str: '""',
    int: "0",
    float: "0.0",
    bool: "false",
}


def _json_text(value: Any) -> str | None:
    """A JSON column's value as the text stored (None stays NULL)."""
    if value is None:
        return None
    return _EMPTY_JSON.get(type(value)) if not value else _dumps(value)


def status_values(statuses: Iterable[RunStatus]) -> list[str]:
    """Statuses as the strings stored, sorted (so equal sets give equal statements)."""
    return sorted(status.value for status in statuses)


def chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    """``items`` in slices short enough for one IN (...) list."""
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
