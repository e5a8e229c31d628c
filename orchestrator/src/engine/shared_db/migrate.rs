//! The schema: the migrations in `orchestrator/migrations/postgres/`,
//! applied at start in one transaction each and recorded in
//! `schema_migrations`. Instances starting together take turns (a lock on
//! that table); each migration runs once.

use deadpool_postgres::Object;

use super::DbError;

/// The migrations, in order: (version, SQL).
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        include_str!("../../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        include_str!("../../../migrations/postgres/0002_shared_engine.sql"),
    ),
    (
        3,
        include_str!("../../../migrations/postgres/0003_event_task.sql"),
    ),
    (
        4,
        include_str!("../../../migrations/postgres/0004_active_jobs.sql"),
    ),
    (
        5,
        include_str!("../../../migrations/postgres/0005_dashboard_sessions.sql"),
    ),
    (
        6,
        include_str!("../../../migrations/postgres/0006_job_lists.sql"),
    ),
    (
        7,
        include_str!("../../../migrations/postgres/0007_component_storage.sql"),
    ),
    (
        8,
        include_str!("../../../migrations/postgres/0008_engine_load.sql"),
    ),
    (
        9,
        include_str!("../../../migrations/postgres/0009_unlogged_nonces.sql"),
    ),
    (
        10,
        include_str!("../../../migrations/postgres/0010_schedules.sql"),
    ),
    (
        11,
        include_str!("../../../migrations/postgres/0011_task_priority.sql"),
    ),
    (
        12,
        include_str!("../../../migrations/postgres/0012_batched_claims.sql"),
    ),
    (
        13,
        include_str!("../../../migrations/postgres/0013_rate_buckets.sql"),
    ),
    (
        14,
        include_str!("../../../migrations/postgres/0014_client_usage.sql"),
    ),
    (
        15,
        include_str!("../../../migrations/postgres/0015_deployed_schedules.sql"),
    ),
    (
        16,
        include_str!("../../../migrations/postgres/0016_engine_updated.sql"),
    ),
];

/// Applies the migrations not applied yet.
pub(super) async fn migrate(client: &mut Object) -> Result<(), DbError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
    for (version, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        // Two instances starting together: one migrates, the other waits.
        tx.batch_execute("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")
            .await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if !done {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            tracing::info!("applied database migration {version}");
        }
        tx.commit().await?;
    }
    Ok(())
}
