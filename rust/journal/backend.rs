//! Where the journal lives, SQLite in `data_dir` or a PostgreSQL database shared by nodes,
//! and the one reading connection over either: the index's queries are written once, in SQL
//! both engines accept (`?N` parameters become PostgreSQL's `$N`), with the one phrase that
//! differs (a distinct string aggregate) asked of the dialect.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use postgres::types::{ToSql, Type};

use super::postgres::Cluster;
use super::{Answer, Request};
use crate::error::Error;
use crate::events::EventQueue;

/// The journal's database.
#[derive(Debug, Clone)]
pub enum Location {
    /// The SQLite file under `data_dir`.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by the nodes of a cluster.
    Postgres(Cluster),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(cluster) => f.write_str(&cluster.described),
        }
    }
}

/// The committing side of either engine.
pub(super) enum Store {
    Postgres(Box<super::postgres::Writer>),
}

impl Store {
    /// Apply a batch in one transaction; the answers of the requests that want one.
    pub fn commit(&mut self, batch: Vec<(u64, Request)>) -> Vec<(u64, Answer)> {
        match self {
            Store::Postgres(writer) => writer.commit(batch),
        }
    }
}

/// After a batch's transaction: the held versions it released go (only once committed: a
/// crash before keeps the row pending and its version), the timers are woken, and the
/// answers wanted are paired with their tickets; a failed transaction fails every request.
pub(super) fn settle(
    batch: Vec<(u64, Request)>,
    result: Result<Vec<Answer>, String>,
    released: Vec<String>,
    held: &Path,
    notify: Option<&EventQueue>,
) -> Vec<(u64, Answer)> {
    let answers = match result {
        Ok(answers) => {
            for name in released {
                let _ = std::fs::remove_file(held.join(name));
            }
            answers
        }
        Err(e) => vec![Err(e); batch.len()],
    };
    if let Some(notify) = notify {
        notify.poke();
    }
    batch
        .into_iter()
        .zip(answers)
        .filter(|((_, request), _)| request.answered())
        .map(|((ticket, _), answer)| (ticket, answer))
        .collect()
}

/// The error of a journal that failed, naming it.
pub(super) fn journal_error(location: &Location, detail: String) -> Error {
    match location {
        Location::Sqlite(database) => super::journal_error(database, detail),
        Location::Postgres(cluster) => {
            Error::Journal(format!("journal {} failed: {detail}", cluster.described))
        }
    }
}

/// A query parameter; typed even when null, since PostgreSQL wants each parameter's type.
#[derive(Debug, Clone, Copy)]
pub(super) enum Arg<'a> {
    Int(Option<i64>),
    Text(Option<&'a str>),
    Bool(bool),
}

/// A value read back.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl Value {
    pub fn int(&self) -> i64 {
        match self {
            Value::Int(v) => *v,
            Value::Real(v) => *v as i64,
            _ => 0,
        }
    }

    pub fn real(&self) -> f64 {
        match self {
            Value::Real(v) => *v,
            Value::Int(v) => *v as f64,
            _ => 0.0,
        }
    }

    pub fn text(self) -> Option<String> {
        match self {
            Value::Text(v) => Some(v),
            _ => None,
        }
    }
}

/// The values of one row, taken in column order.
pub(super) struct Cells(std::vec::IntoIter<Value>);

impl Cells {
    pub fn new(row: Vec<Value>) -> Cells {
        Cells(row.into_iter())
    }

    fn next(&mut self) -> Value {
        self.0.next().unwrap_or(Value::Null)
    }

    pub fn int(&mut self) -> i64 {
        self.next().int()
    }

    pub fn real(&mut self) -> f64 {
        self.next().real()
    }

    pub fn text(&mut self) -> Option<String> {
        self.next().text()
    }

    /// Text, empty for NULL.
    pub fn string(&mut self) -> String {
        self.text().unwrap_or_default()
    }
}

/// One reading connection of either engine.
pub(super) enum Reader {
    Sqlite(rusqlite::Connection),
    Postgres(Box<Remote>),
}

/// A reading connection to a shared journal, connected again when lost.
pub(super) struct Remote {
    pub cluster: Cluster,
    pub client: Option<postgres::Client>,
    /// Whether this node runs the study/series timers now (its heartbeat says).
    pub leads: Arc<AtomicBool>,
}

impl Remote {
    /// Run `sql` (with `?N` parameters) on the connection, connecting again if it was lost.
    fn run<T>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        f: impl FnOnce(
            &mut postgres::Client,
            &str,
            &[&(dyn ToSql + Sync)],
        ) -> Result<T, postgres::Error>,
    ) -> Result<T, String> {
        let client = self.cluster.reconnect(&mut self.client)?;
        let args = pg_args(args);
        let args: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| &**a).collect();
        f(client, &numbered(sql), &args).map_err(|e| self.cluster.failed(e))
    }
}

impl Reader {
    /// Rows of `sql` (with `?N` parameters), each a row of values.
    pub fn rows(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Vec<Value>>, String> {
        match self {
            Reader::Sqlite(conn) => sqlite_rows(conn, sql, args).map_err(|e| e.to_string()),
            Reader::Postgres(remote) => {
                let rows = remote.run(sql, args, |client, sql, args| client.query(sql, args))?;
                rows.iter().map(pg_row).collect()
            }
        }
    }

    /// Rows changed by `sql`.
    pub fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, String> {
        match self {
            Reader::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(sql).map_err(|e| e.to_string())?;
                let changed =
                    statement.execute(rusqlite::params_from_iter(args.iter().map(sqlite_arg)));
                changed.map(|n| n as u64).map_err(|e| e.to_string())
            }
            Reader::Postgres(remote) => {
                remote.run(sql, args, |client, sql, args| client.execute(sql, args))
            }
        }
    }

    /// The aggregate of distinct non-null `column` values, comma-separated.
    pub fn distinct_list(&self, column: &str) -> String {
        match self {
            Reader::Sqlite(_) => format!("GROUP_CONCAT(DISTINCT {column})"),
            Reader::Postgres(_) => format!("string_agg(DISTINCT {column}, ',')"),
        }
    }

    /// The acknowledging node's column (SQLite's journal has none).
    pub fn node_column(&self) -> &'static str {
        match self {
            Reader::Sqlite(_) => "NULL",
            Reader::Postgres(_) => "node",
        }
    }

    /// Whether a database error is worth waiting out (a shared server that went away),
    /// rather than a broken file.
    pub fn is_remote(&self) -> bool {
        matches!(self, Reader::Postgres(_))
    }

    /// Whether this node runs the timers: always alone, else while it holds the lease.
    pub fn leads(&self) -> bool {
        match self {
            Reader::Sqlite(_) => true,
            Reader::Postgres(remote) => remote.leads.load(Ordering::Relaxed),
        }
    }

    /// The node whose rows this reader delivers (PostgreSQL: each node delivers its own).
    pub fn node(&self) -> Option<&str> {
        match self {
            Reader::Sqlite(_) => None,
            Reader::Postgres(remote) => Some(&remote.cluster.node),
        }
    }
}

fn sqlite_arg(arg: &Arg<'_>) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match *arg {
        Arg::Int(v) => v.map_or(V::Null, V::Integer),
        Arg::Text(v) => v.map_or(V::Null, |t| V::Text(t.to_owned())),
        Arg::Bool(v) => V::Integer(v.into()),
    }
}

fn sqlite_rows(
    conn: &rusqlite::Connection,
    sql: &str,
    args: &[Arg<'_>],
) -> rusqlite::Result<Vec<Vec<Value>>> {
    use rusqlite::types::ValueRef;
    let mut statement = conn.prepare_cached(sql)?;
    let width = statement.column_count();
    let rows = statement.query_map(
        rusqlite::params_from_iter(args.iter().map(sqlite_arg)),
        |row| {
            (0..width)
                .map(|i| {
                    Ok(match row.get_ref(i)? {
                        ValueRef::Integer(v) => Value::Int(v),
                        ValueRef::Real(v) => Value::Real(v),
                        ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
                        ValueRef::Null | ValueRef::Blob(_) => Value::Null,
                    })
                })
                .collect()
        },
    )?;
    rows.collect()
}

/// SQLite's `?N` parameters as PostgreSQL's `$N`.
pub(super) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

fn pg_args<'a>(args: &[Arg<'a>]) -> Vec<Box<dyn ToSql + Sync + 'a>> {
    args.iter()
        .map(|arg| -> Box<dyn ToSql + Sync + 'a> {
            match *arg {
                Arg::Int(v) => Box::new(v),
                Arg::Text(v) => Box::new(v),
                Arg::Bool(v) => Box::new(v),
            }
        })
        .collect()
}

pub(super) fn pg_row(row: &postgres::Row) -> Result<Vec<Value>, String> {
    let value = |i: usize| -> Result<Value, postgres::Error> {
        let column = &row.columns()[i];
        let value = match *column.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::BOOL => row
                .try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(Value::Real),
            _ => row.try_get::<_, Option<String>>(i)?.map(Value::Text),
        };
        Ok(value.unwrap_or(Value::Null))
    };
    (0..row.len())
        .map(|i| value(i).map_err(|e| e.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn parameters_are_numbered_for_postgres() {
        assert_eq!(
            numbered("a = ?1 AND (?12 IS NULL) AND b = '?'"),
            "a = $1 AND ($12 IS NULL) AND b = '?'"
        );
    }
}
