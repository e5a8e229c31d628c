//! The job list's one statement per shape of filter, for both SQL backends:
//! only the filters given appear, so each shape is served by its index
//! (owner; owner + status; owner + blueprint; each in the list's order) and
//! a page reads only its own rows. A `?1 IS NULL OR owner = ?1` form would
//! make the database scan and sort every job.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::JobFilter;

/// A parameter of the statement, converted by each backend.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(String),
    Int(i64),
    Time(DateTime<Utc>),
    Id(Uuid),
}

/// Placeholder syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `?1`
    Sqlite,
    /// `$1`
    Postgres,
}

/// `SELECT body FROM jobs …` for `filter`, newest first, and its parameters.
pub fn list_query(filter: &JobFilter, dialect: Dialect) -> (String, Vec<Arg>) {
    let mut sql = String::from("SELECT body FROM jobs WHERE TRUE");
    let mut args = Vec::new();
    let param = |args: &mut Vec<Arg>, arg: Arg| {
        args.push(arg);
        match dialect {
            Dialect::Sqlite => format!("?{}", args.len()),
            Dialect::Postgres => format!("${}", args.len()),
        }
    };
    if let Some(owner) = &filter.owner {
        let p = param(&mut args, Arg::Text(owner.clone()));
        sql.push_str(&format!(" AND owner = {p}"));
    }
    if let Some(status) = filter.status {
        let p = param(&mut args, Arg::Text(status.as_str().into()));
        sql.push_str(&format!(" AND status = {p}"));
    }
    if let Some(blueprint) = &filter.blueprint {
        let p = param(&mut args, Arg::Text(blueprint.clone()));
        sql.push_str(&format!(" AND blueprint = {p}"));
    }
    if let Some(after) = &filter.after {
        let at = param(&mut args, Arg::Time(after.created_at));
        let id = param(&mut args, Arg::Id(after.id));
        sql.push_str(&format!(" AND (created_at, id) < ({at}, {id})"));
    }
    let limit = param(&mut args, Arg::Int(super::sql_count(filter.limit)));
    let offset = param(&mut args, Arg::Int(super::sql_count(filter.offset)));
    sql.push_str(&format!(
        " ORDER BY created_at DESC, id DESC LIMIT {limit} OFFSET {offset}"
    ));
    (sql, args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobStatus;
    use crate::storage::JobCursor;

    #[test]
    fn only_the_filters_given_appear() {
        let owner_only = JobFilter {
            owner: Some("alice".into()),
            limit: 20,
            ..Default::default()
        };
        let (sql, args) = list_query(&owner_only, Dialect::Sqlite);
        assert_eq!(
            sql,
            "SELECT body FROM jobs WHERE TRUE AND owner = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2 OFFSET ?3"
        );
        assert_eq!(args.len(), 3);
        let all = JobFilter {
            owner: Some("alice".into()),
            status: Some(JobStatus::Finished),
            blueprint: Some("b".into()),
            after: Some(JobCursor {
                created_at: Utc::now(),
                id: Uuid::nil(),
            }),
            limit: 20,
            offset: 0,
        };
        let (sql, args) = list_query(&all, Dialect::Postgres);
        assert!(
            sql.contains("status = $2 AND blueprint = $3 AND (created_at, id) < ($4, $5)"),
            "{sql}"
        );
        assert_eq!(args.len(), 7);
    }
}
