//! Where the schema is migrated ([`Store::migrate`]), and the rules of
//! docs/data-model.md, "Changing the schema", that a migration's text shows.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::PgConnection;
use sqlx::migrate::{Migrate as _, Migration};

use super::{Store, StoreError, StoreResult};

/// The migrations in the repository's `migrations/` directory, embedded in
/// the binary so a deployed `taskflow` can migrate its own database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How often a process waiting for another's migrations asks for its turn
/// ([`Store::migrate`]).
const MIGRATION_LOCK_POLL: Duration = Duration::from_millis(100);

impl Store {
    /// Applies pending migrations. Safe to run concurrently from several
    /// processes: they take turns under a session advisory lock, held
    /// across transactions, so this store must not be behind a
    /// transaction-mode pooler.
    ///
    /// A process waits for its turn between statements, asking for the lock
    /// every [`MIGRATION_LOCK_POLL`], never inside one: sqlx's own lock
    /// waits in `pg_advisory_lock`, a statement that holds a snapshot while
    /// it waits, and `CREATE INDEX CONCURRENTLY` (which a migration may run:
    /// docs/data-model.md, "Changing the schema") waits for every older
    /// snapshot to end, so the process running it and one waiting for its
    /// turn waited for each other for good. sqlx's lock is still taken
    /// after ours, and is then free unless another tool migrates.
    ///
    /// Before applying anything, it drops what an interrupted index build
    /// left ([`drop_indexes_of_interrupted_builds`]).
    pub async fn migrate(&self) -> StoreResult<()> {
        let pool = self
            .pool
            .with_sessions()
            .ok_or(StoreError::SessionRequired(
                "migrations hold an advisory lock across transactions",
            ))?;
        let mut session = pool.acquire().await?;
        // Never back to the pool holding the lock, even if this future is
        // dropped midway: a closed session releases its advisory locks (a
        // session-mode pooler's too, by its default `DISCARD ALL`).
        session.close_on_drop();
        let mut waited = false;
        while !sqlx::query_scalar!(
            r#"SELECT pg_try_advisory_lock(hashtextextended('taskflow:migrations', 0)) AS "taken!""#
        )
        .fetch_one(&mut *session)
        .await?
        {
            if !waited {
                tracing::info!("another process is migrating the database; waiting for it");
                waited = true;
            }
            tokio::time::sleep(MIGRATION_LOCK_POLL).await;
        }
        let migrated = async {
            // sqlx's lock, which `run` takes again (advisory locks stack
            // within a session) and releases once: the closed session
            // releases the rest. Taken here, it also keeps another tool's
            // sqlx migrator from building an index while it is repaired.
            session.lock().await?;
            drop_indexes_of_interrupted_builds(&mut session).await?;
            Ok::<_, StoreError>(MIGRATOR.run(&mut *session).await?)
        }
        .await;
        let closed = session.close().await;
        migrated?;
        Ok(closed?)
    }
}

/// Drops the index of each pending `-- no-transaction` migration that
/// exists already: one an interrupted run of that migration left.
///
/// Such a migration is one `CREATE INDEX CONCURRENTLY` ([`index_built_by`]),
/// and sqlx records it as applied only once the statement has returned. A
/// build cancelled or failed midway (its process stopped, its connection
/// lost, PostgreSQL ending it as a deadlock) leaves the index behind,
/// invalid: written to but never used. A process stopped between the build
/// and the record leaves it valid. Either way the file is still pending,
/// and running it again fails on the index's name at every start, for good,
/// until someone drops it by hand. So the next migrating process drops it
/// and builds it again.
///
/// Runs under both migration locks ([`Store::migrate`]), so nobody builds
/// the index meanwhile. It runs before sqlx checks the applied migrations'
/// checksums: a run that then fails on an edited migration has dropped the
/// index of a migration still pending, which the next run builds again.
async fn drop_indexes_of_interrupted_builds(session: &mut PgConnection) -> StoreResult<()> {
    session.ensure_migrations_table().await?;
    let applied: HashSet<i64> = session
        .list_applied_migrations()
        .await?
        .into_iter()
        .map(|migration| migration.version)
        .collect();
    let pending_builds = MIGRATOR
        .iter()
        .filter(|migration| {
            migration.no_tx
                && !migration.migration_type.is_down_migration()
                && !applied.contains(&migration.version)
        })
        .filter_map(|migration| Some((migration.version, index_built_by(migration)?)));
    for (version, build) in pending_builds {
        // Looked up through its table: an index lives in its table's
        // schema, which need not be the first of the search path.
        let left_behind = sqlx::query_scalar!(
            r#"SELECT i.indexrelid::regclass::text AS "index!"
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE i.indrelid = to_regclass($1) AND c.relname = $2"#,
            build.table,
            build.index
        )
        .fetch_optional(&mut *session)
        .await?;
        if let Some(index) = left_behind {
            tracing::warn!(
                migration = version,
                index,
                "an interrupted run of this migration left its index behind; \
                 dropping it to build it again"
            );
            // `regclass` text is quoted and qualified as needed, so it can
            // stand in the statement's text, where a parameter cannot.
            sqlx::query(&format!("DROP INDEX CONCURRENTLY {index}"))
                .execute(&mut *session)
                .await?;
        }
    }
    Ok(())
}

/// The index a migration builds `CONCURRENTLY`, and its table, named as
/// PostgreSQL stores them.
#[derive(Debug, PartialEq, Eq)]
struct IndexBuild {
    index: String,
    table: String,
}

/// The index a `-- no-transaction` migration builds: its statement is
/// `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] index ON [ONLY]
/// table …`, both names unquoted and unqualified, which PostgreSQL folds to
/// lower case. `None` for any other statement (one that drops or rebuilds
/// an index `CONCURRENTLY`), or for names quoted, qualified or left out,
/// which `migration_rules` refuses.
fn index_built_by(migration: &Migration) -> Option<IndexBuild> {
    let sql = statements(&migration.sql);
    let build = sql
        .strip_prefix("CREATE INDEX CONCURRENTLY ")
        .or_else(|| sql.strip_prefix("CREATE UNIQUE INDEX CONCURRENTLY "))?;
    let build = build.strip_prefix("IF NOT EXISTS ").unwrap_or(build);
    let mut words = build.split(' ');
    let index = words.next()?;
    if words.next()? != "ON" {
        return None;
    }
    let table = match words.next()? {
        "ONLY" => words.next()?,
        table => table,
    };
    let table = table.split('(').next()?;
    Some(IndexBuild {
        index: unquoted_name(index)?,
        table: unquoted_name(table)?,
    })
}

/// `word` as PostgreSQL stores an unquoted, unqualified name: lower case.
fn unquoted_name(word: &str) -> Option<String> {
    let plain = word.bytes().next().is_some_and(|b| !b.is_ascii_digit())
        && word
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    plain.then(|| word.to_lowercase())
}

/// A migration's statements, upper case, without comment lines, each run
/// of white space one space.
fn statements(sql: &str) -> String {
    sql.lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .flat_map(str::split_whitespace)
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}

/// The rules of docs/data-model.md, "Changing the schema", that a
/// migration's text shows, for every migration written since them.
#[cfg(test)]
mod migration_rules {
    use std::borrow::Cow;

    use sqlx::migrate::{Migration, MigrationType};

    use super::{IndexBuild, MIGRATOR, index_built_by, statements};

    /// The first migration written to the rules; earlier ones cannot change
    /// (their checksums are applied).
    const FIRST_UNDER_THE_RULES: i64 = 20261219000001;

    #[test]
    fn migrations_build_indexes_concurrently_and_alter_tables_with_a_lock_timeout() {
        let mut checked = 0;
        for migration in MIGRATOR
            .iter()
            .filter(|migration| migration.version >= FIRST_UNDER_THE_RULES)
        {
            let sql = statements(&migration.sql);
            let name = format!("{} {}", migration.version, migration.description);
            if sql.contains("CREATE INDEX") || sql.contains("CREATE UNIQUE INDEX") {
                assert!(
                    migration.no_tx && sql.contains("INDEX CONCURRENTLY"),
                    "{name}: build indexes CONCURRENTLY, in a `-- no-transaction` file"
                );
            }
            if let Some(altered) = sql.find("ALTER TABLE") {
                // SET LOCAL: a plain SET would outlast the migration on the
                // migrator's session, into a later CONCURRENTLY build,
                // whose waits it would time out.
                let timeout = sql.find("SET LOCAL LOCK_TIMEOUT");
                assert!(
                    !migration.no_tx && timeout.is_some_and(|at| at < altered),
                    "{name}: alter a table in a transaction that first runs \
                     SET LOCAL lock_timeout"
                );
            }
            checked += 1;
        }
        assert!(checked > 0, "no migration is under the rules");
    }

    /// `Store::migrate` can repair an interrupted build only of an index it
    /// can name.
    #[test]
    fn every_no_transaction_migration_builds_one_named_index() {
        let no_tx: Vec<_> = MIGRATOR
            .iter()
            .filter(|migration| migration.no_tx)
            .collect();
        assert!(!no_tx.is_empty());
        for migration in no_tx {
            assert!(
                index_built_by(migration).is_some(),
                "{} {}: build one index, both it and its table named unquoted and unqualified",
                migration.version,
                migration.description
            );
        }
    }

    fn no_tx_migration(sql: &'static str) -> Migration {
        Migration::new(
            1,
            Cow::Borrowed("test"),
            MigrationType::Simple,
            Cow::Borrowed(sql),
            true,
        )
    }

    #[test]
    fn the_index_a_migration_builds_is_named_as_postgresql_stores_it() {
        let built = |sql| index_built_by(&no_tx_migration(sql));
        let build = |index: &str, table: &str| {
            Some(IndexBuild {
                index: index.to_owned(),
                table: table.to_owned(),
            })
        };
        assert_eq!(
            built("-- why\nCREATE INDEX CONCURRENTLY Jobs_Idx ON jobs (id);"),
            build("jobs_idx", "jobs")
        );
        assert_eq!(
            built("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS k_idx\n ON ONLY t(k)"),
            build("k_idx", "t")
        );
        for refused in [
            "CREATE INDEX CONCURRENTLY ON jobs (id)",
            "CREATE INDEX CONCURRENTLY \"Odd\" ON jobs (id)",
            "CREATE INDEX CONCURRENTLY s.i ON jobs (id)",
            "CREATE INDEX CONCURRENTLY i ON s.jobs (id)",
            "DROP INDEX CONCURRENTLY jobs_idx",
            "REINDEX INDEX CONCURRENTLY jobs_idx",
            "VACUUM jobs",
        ] {
            assert_eq!(built(refused), None, "{refused}");
        }
    }
}
