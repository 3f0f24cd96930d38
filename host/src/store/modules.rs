//! Task components, stored content-addressed by their SHA-256.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Store, StoreError, StoreResult};

/// How many times [`Store::insert_module`] inserts a module that deletes
/// keep removing before it gives up.
const INSERT_TRIES: usize = 3;

/// A stored module, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleRecord {
    /// SHA-256 of the bytes, lowercase hex.
    pub hash: String,
    /// Size of the component in bytes.
    pub size_bytes: i64,
    /// When it was first uploaded.
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// Stores a module under its hash. Idempotent: storing the same bytes
    /// again returns the original record. The caller computes `hash` from
    /// `bytes` and has validated them.
    ///
    /// An upload that finds the module stored reads the stored record; a
    /// delete can land between the two, and then the module is stored
    /// again. Only a delete landing that way each of [`INSERT_TRIES`] times
    /// makes the upload fail ([`StoreError::Raced`]).
    ///
    /// A new module also refreshes the table's statistics. Every job insert
    /// checks its module exists, and PostgreSQL caches one plan for that
    /// statement only once it can cost it: without statistics (autovacuum
    /// analyzes a table only after 50 changed rows, so a deployment with few
    /// modules never gets any) it plans the insert afresh on every
    /// submission, which cost a third of a single submission's time here
    /// (docs/benchmarks.md). Uploads are rare and dominated by compiling
    /// the component; `ANALYZE` samples a bounded number of rows.
    pub async fn insert_module(&self, hash: &str, bytes: &[u8]) -> StoreResult<ModuleRecord> {
        for _ in 0..INSERT_TRIES {
            if let Some(inserted) = self.insert_new_module(hash, bytes).await? {
                self.analyze_modules().await;
                return Ok(inserted);
            }
            if let Some(stored) = self.get_module(hash).await? {
                return Ok(stored);
            }
        }
        Err(StoreError::Raced)
    }

    /// Inserts the module unless one has its hash: its record if inserted.
    async fn insert_new_module(
        &self,
        hash: &str,
        bytes: &[u8],
    ) -> StoreResult<Option<ModuleRecord>> {
        super::statement("insert_module");
        Ok(sqlx::query_as!(
            ModuleRecord,
            "INSERT INTO modules (hash, size_bytes, bytes) VALUES ($1, $2, $3)
             ON CONFLICT (hash) DO NOTHING
             RETURNING hash, size_bytes, created_at",
            hash,
            bytes.len() as i64,
            bytes
        )
        .fetch_optional(self.pool())
        .await?)
    }

    /// `ANALYZE modules`. A failure is only logged: the module is stored,
    /// and autovacuum analyzes the table eventually.
    async fn analyze_modules(&self) {
        super::statement("analyze_modules");
        if let Err(error) = sqlx::query!("ANALYZE modules").execute(self.pool()).await {
            tracing::warn!(%error, "cannot refresh the statistics of modules");
        }
    }

    /// The module's record, if it was uploaded.
    pub async fn get_module(&self, hash: &str) -> StoreResult<Option<ModuleRecord>> {
        super::statement("get_module");
        Ok(sqlx::query_as!(
            ModuleRecord,
            "SELECT hash, size_bytes, created_at FROM modules WHERE hash = $1",
            hash
        )
        .fetch_optional(self.pool())
        .await?)
    }

    /// The module's bytes, if it was uploaded.
    pub async fn module_bytes(&self, hash: &str) -> StoreResult<Option<Vec<u8>>> {
        super::statement("module_bytes");
        Ok(
            sqlx::query_scalar!("SELECT bytes FROM modules WHERE hash = $1", hash)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Modules in hash order, starting after `after` (keyset pagination;
    /// every hash sorts after `''`, so each page is a range scan of the
    /// primary key, as in [`Store::list_module_names`]).
    pub async fn list_modules(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<ModuleRecord>> {
        super::statement("list_modules");
        Ok(sqlx::query_as!(
            ModuleRecord,
            "SELECT hash, size_bytes, created_at FROM modules
             WHERE hash > COALESCE($1, '')
             ORDER BY hash LIMIT $2",
            after,
            limit
        )
        .fetch_all(self.pool())
        .await?)
    }
}
