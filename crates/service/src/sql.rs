//! The one way services open their SQL database: sqlx's `Any` driver over
//! SQLite (embedded default) or Postgres, with migrations applied.

use std::time::Duration;

use sqlx::{
    AnyPool,
    any::AnyPoolOptions,
    migrate::{MigrateError, Migrator},
};

/// Every SQLite connection's settings: WAL (readers beside the writer), a
/// busy timeout (a writer waits for the lock instead of failing), statement
/// journals in memory (a multi-row statement inside a transaction otherwise
/// writes its undo pages to a temporary file) and a page cache of up to
/// 32 MiB per connection (SQLite's default of 2 MiB makes a growing database
/// read its index pages back from the OS on every commit).
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -32768;";

/// Connects to `url` (`sqlite://…` or `postgres://…`) and applies `migrator`.
///
/// A database that already has migrations this binary does not know (a newer
/// version migrated it during a rolling upgrade) is accepted: schema changes
/// are additive, so older binaries keep working beside newer ones.
///
/// SQLite gets WAL mode (readers beside the writer) and a busy timeout (a
/// writer waits for the lock instead of failing). SQLite has no migration
/// lock, so processes starting together on a new file can race to apply the
/// same migration; the loser sees it applied when it retries.
pub async fn connect(url: &str, max_connections: u32, mut migrator: Migrator) -> Result<AnyPool, MigrateError> {
    migrator.set_ignore_missing(true);
    sqlx::any::install_default_drivers();
    let mut options = AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3));
    let sqlite = url.starts_with("sqlite:");
    if sqlite {
        options = options.after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::raw_sql(SQLITE_PRAGMAS).execute(conn).await?;
                Ok(())
            })
        });
    }
    let pool = options.connect(url).await?;
    let mut attempt = 0;
    loop {
        match migrator.run(&pool).await {
            Ok(()) => return Ok(pool),
            Err(error) if sqlite && attempt < 5 => {
                attempt += 1;
                tracing::debug!(%error, attempt, "migration failed; retrying in case another process applied it");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Whether `url` names a SQLite database (for the few queries whose SQL differs).
pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// Checks a database section of a config (`<section>.url`,
/// `<section>.max_connections`): the URL names SQLite or Postgres and the
/// pool has room for at least one connection.
pub fn check_config(section: &str, url: &str, max_connections: u32) -> Result<(), crate::ConfigError> {
    if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(crate::ConfigError::invalid(
            format!("{section}.url"),
            "must start with sqlite: or postgres://",
        ));
    }
    if max_connections == 0 {
        return Err(crate::ConfigError::invalid(
            format!("{section}.max_connections"),
            "must be greater than 0",
        ));
    }
    Ok(())
}
