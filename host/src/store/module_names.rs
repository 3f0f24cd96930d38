//! Module names (`module_names`, `module_name_moves`): a name points at one
//! hash; every move is kept, so an audit can tell who moved it when and a
//! rollback is one call. Submissions resolve names once, at submit
//! ([`Store::module_names_for`]); a job keeps the hash it got.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::pool::Transaction;
use super::{Store, StoreError, StoreResult};
use crate::job::MAX_NAMES_PER_MODULE;

/// One move of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameMove {
    /// The name.
    pub name: String,
    /// Where it pointed before (`None` when it was new).
    pub from_hash: Option<String>,
    /// Where it points after.
    pub to_hash: String,
    /// Who moved it (module_names.rs in the API says how callers are told
    /// apart).
    pub moved_by: String,
    /// When.
    pub moved_at: DateTime<Utc>,
}

/// What a delete of a module did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleDeletion {
    /// It is gone.
    Deleted,
    /// No module has this hash.
    NotFound,
    /// It is in use, and stays.
    InUse(ModuleInUse),
}

/// What a rollback of a name did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameRollback {
    /// The name points where its latest move took it from; this move.
    Moved(NameMove),
    /// No name is `name`.
    NoSuchName,
    /// Its only move created it; it points at `points_at`.
    NothingBefore {
        /// Where it points.
        points_at: String,
    },
}

/// Why a module cannot be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInUse {
    /// Names pointing at it.
    pub names: Vec<String>,
    /// Some of the unfinished jobs that would run it (at most a few).
    pub unfinished_jobs: Vec<uuid::Uuid>,
}

impl Store {
    /// Points `name` at module `hash`, as `moved_by`, and records the move.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownModules`] if no module has this hash,
    /// [`StoreError::TooManyNames`] if it has as many names as a module may
    /// have; nothing is written then.
    pub async fn move_module_name(
        &self,
        name: &str,
        hash: &str,
        moved_by: &str,
    ) -> StoreResult<NameMove> {
        super::statement("move_module_name");
        let mut tx = self.pool().begin().await?;
        lock_name(&mut tx, name).await?;
        let before =
            sqlx::query_scalar!("SELECT module_hash FROM module_names WHERE name = $1", name)
                .fetch_optional(tx.statements())
                .await?;
        let moved = record_move(&mut tx, name, before.as_deref(), hash, moved_by).await?;
        tx.commit().await?;
        Ok(moved)
    }

    /// Points `name` back where its latest move took it from, as
    /// `moved_by`, and records that as a move of its own (so a second
    /// rollback undoes the first). The latest move is read under the
    /// name's lock, so a rollback undoes the move that is latest when it
    /// runs, however many moves came since its caller looked.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownModules`] if the module it would point at was
    /// deleted since, [`StoreError::TooManyNames`] if that module has as
    /// many names as a module may have; nothing is written then.
    pub async fn roll_back_module_name(
        &self,
        name: &str,
        moved_by: &str,
    ) -> StoreResult<NameRollback> {
        super::statement("roll_back_module_name");
        let mut tx = self.pool().begin().await?;
        lock_name(&mut tx, name).await?;
        let latest = sqlx::query!(
            "SELECT from_hash, to_hash FROM module_name_moves
             WHERE name = $1 ORDER BY id DESC LIMIT 1",
            name
        )
        .fetch_optional(tx.statements())
        .await?;
        let Some(latest) = latest else {
            return Ok(NameRollback::NoSuchName);
        };
        let Some(previous) = latest.from_hash else {
            return Ok(NameRollback::NothingBefore {
                points_at: latest.to_hash,
            });
        };
        let moved = record_move(&mut tx, name, Some(&latest.to_hash), &previous, moved_by).await?;
        tx.commit().await?;
        Ok(NameRollback::Moved(moved))
    }

    /// The moves of `name`, newest first, up to `limit`.
    pub async fn module_name_moves(&self, name: &str, limit: i64) -> StoreResult<Vec<NameMove>> {
        super::statement("module_name_moves");
        Ok(sqlx::query_as!(
            NameMove,
            "SELECT name, from_hash, to_hash, moved_by, moved_at FROM module_name_moves
             WHERE name = $1 ORDER BY id DESC LIMIT $2",
            name,
            limit
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// A page of names and the hashes they point at, by name: the first
    /// `limit` after `after`. Every name sorts after `''`, so the first page
    /// is the same range scan of the primary key as the others (a generic
    /// plan of `$1 IS NULL OR name > $1` would read every name before the
    /// cursor).
    pub async fn list_module_names(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<(String, String)>> {
        super::statement("list_module_names");
        Ok(sqlx::query!(
            "SELECT name, module_hash FROM module_names
             WHERE name > COALESCE($1, '')
             ORDER BY name LIMIT $2",
            after,
            limit
        )
        .fetch_all(self.pool())
        .await?
        .into_iter()
        .map(|row| (row.name, row.module_hash))
        .collect())
    }

    /// The names pointing at each of `hashes`, by hash, each module's by
    /// name: at most [`MAX_NAMES_PER_MODULE`] each, unless a module was
    /// given more before that limit existed.
    pub async fn names_of_modules(
        &self,
        hashes: &[&str],
    ) -> StoreResult<HashMap<String, Vec<String>>> {
        super::statement("names_of_modules");
        let rows = sqlx::query!(
            "SELECT module_hash, name FROM module_names
             WHERE module_hash = ANY($1) ORDER BY module_hash, name",
            hashes as &[&str]
        )
        .fetch_all(self.pool())
        .await?;
        let mut names: HashMap<String, Vec<String>> = HashMap::new();
        for row in rows {
            names.entry(row.module_hash).or_default().push(row.name);
        }
        Ok(names)
    }

    /// The names pointing at module `hash`, by name.
    pub async fn names_of_module(&self, hash: &str) -> StoreResult<Vec<String>> {
        Ok(self
            .names_of_modules(&[hash])
            .await?
            .remove(hash)
            .unwrap_or_default())
    }

    /// The hashes `names` point at now (names that point nowhere are left
    /// out): what a submission naming its module runs.
    pub async fn module_names_for(&self, names: &[&str]) -> StoreResult<HashMap<String, String>> {
        if names.is_empty() {
            return Ok(HashMap::new());
        }
        super::statement("module_names_for");
        Ok(sqlx::query!(
            "SELECT name, module_hash FROM module_names WHERE name = ANY($1)",
            names as &[&str]
        )
        .fetch_all(self.pool())
        .await?
        .into_iter()
        .map(|row| (row.name, row.module_hash))
        .collect())
    }

    /// Deletes module `hash` unless a name points at it or an unfinished
    /// job would run it. One transaction holding the module's row lock, so
    /// no name can be pointed at it meanwhile. Submissions do not take that
    /// lock (docs/data-model.md says why): one racing the delete can still
    /// insert a job of the module, whose attempts then fail as they cannot
    /// load it.
    pub async fn delete_module_if_unused(&self, hash: &str) -> StoreResult<ModuleDeletion> {
        super::statement("delete_module_if_unused");
        let mut tx = self.pool().begin().await?;
        let exists = sqlx::query_scalar!(
            "SELECT 1 AS one FROM modules WHERE hash = $1 FOR UPDATE",
            hash
        )
        .fetch_optional(tx.statements())
        .await?
        .is_some();
        if !exists {
            return Ok(ModuleDeletion::NotFound);
        }
        let names = sqlx::query_scalar!(
            "SELECT name FROM module_names WHERE module_hash = $1 ORDER BY name",
            hash
        )
        .fetch_all(tx.statements())
        .await?;
        let unfinished_jobs = sqlx::query_scalar!(
            "SELECT id FROM jobs
             WHERE module_hash = $1 AND state IN ('scheduled', 'available', 'running', 'retrying')
             LIMIT 5",
            hash
        )
        .fetch_all(tx.statements())
        .await?;
        if !names.is_empty() || !unfinished_jobs.is_empty() {
            return Ok(ModuleDeletion::InUse(ModuleInUse {
                names,
                unfinished_jobs,
            }));
        }
        sqlx::query!("DELETE FROM modules WHERE hash = $1", hash)
            .execute(tx.statements())
            .await?;
        tx.commit().await?;
        Ok(ModuleDeletion::Deleted)
    }
}

/// Takes the lock every move of `name` holds from reading where it points
/// to writing the move: a transaction-level advisory lock, not the name's
/// row lock, because a name not yet created has no row to lock and two
/// first moves would both record it as new. So the name and its history
/// never disagree, even when moves race.
async fn lock_name(tx: &mut Transaction<'_>, name: &str) -> StoreResult<()> {
    sqlx::query_scalar!(
        r#"SELECT 1 AS "locked!" FROM pg_advisory_xact_lock(hashtextextended('module_name:' || $1, 0))"#,
        name
    )
    .fetch_one(tx.statements())
    .await?;
    Ok(())
}

/// Points `name`, which points at `before` now, at `hash` and records the
/// move; under [`lock_name`]. Holds module `hash`'s row lock from counting
/// its names to the move, so concurrent moves onto one module cannot pass
/// [`MAX_NAMES_PER_MODULE`] together, and the module cannot be deleted
/// meanwhile ([`Store::delete_module_if_unused`] takes the same lock).
///
/// # Errors
///
/// [`StoreError::UnknownModules`] if no module has this hash,
/// [`StoreError::TooManyNames`] if other names point at it as many times
/// as a module may be named.
async fn record_move(
    tx: &mut Transaction<'_>,
    name: &str,
    before: Option<&str>,
    hash: &str,
    moved_by: &str,
) -> StoreResult<NameMove> {
    let exists = sqlx::query_scalar!(
        "SELECT 1 AS one FROM modules WHERE hash = $1 FOR NO KEY UPDATE",
        hash
    )
    .fetch_optional(tx.statements())
    .await?
    .is_some();
    if !exists {
        return Err(StoreError::UnknownModules(vec![hash.to_owned()]));
    }
    // A statement of its own, after the lock: its snapshot includes the
    // names of a move that held the lock before. Counted in the locking
    // statement, they were left out (its snapshot predates the wait), and
    // two moves onto a module of 99 names both counted 99.
    let limit = MAX_NAMES_PER_MODULE as i64;
    let other_names = sqlx::query_scalar!(
        r#"SELECT count(*) AS "names!" FROM (SELECT 1 FROM module_names
                                             WHERE module_hash = $1 AND name <> $2
                                             LIMIT $3) AS named"#,
        hash,
        name,
        limit
    )
    .fetch_one(tx.statements())
    .await?;
    if other_names >= limit {
        return Err(StoreError::TooManyNames {
            hash: hash.to_owned(),
            limit: MAX_NAMES_PER_MODULE,
        });
    }
    Ok(sqlx::query_as!(
        NameMove,
        r#"WITH moved AS (
             INSERT INTO module_names (name, module_hash) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE
             SET module_hash = EXCLUDED.module_hash, updated_at = now()
             RETURNING name
         )
         INSERT INTO module_name_moves (name, from_hash, to_hash, moved_by)
         SELECT $1, $4, $2, $3 FROM moved
         RETURNING name, from_hash, to_hash, moved_by, moved_at"#,
        name,
        hash,
        moved_by,
        before
    )
    .fetch_one(tx.statements())
    .await?)
}
