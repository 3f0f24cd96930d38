//! Sessions of the web console (migrations/20261207000001_console.sql;
//! what they mean: host/src/console/session.rs).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Store, StoreResult};

/// A console session as stored: everything but its id, of which only the
/// SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// SHA-256 of the API token it was opened with; `None` on an open API.
    pub token_sha256: Option<Vec<u8>>,
    /// The token its state-changing forms must carry.
    pub csrf_token: String,
    /// When it stops being accepted.
    pub expires_at: DateTime<Utc>,
}

impl Store {
    /// Stores a new session, and deletes those that expired: logins are
    /// rare, so the table stays small without a maintenance service.
    pub async fn create_console_session(
        &self,
        id_sha256: &[u8; 32],
        token_sha256: Option<&[u8; 32]>,
        csrf_token: &str,
        lifetime: Duration,
    ) -> StoreResult<()> {
        super::statement("create_console_session");
        let mut tx = self.pool().begin().await?;
        sqlx::query!("DELETE FROM console_sessions WHERE expires_at < now()")
            .execute(tx.statements())
            .await?;
        sqlx::query!(
            "INSERT INTO console_sessions (id_sha256, token_sha256, csrf_token, expires_at)
             VALUES ($1, $2, $3, now() + $4 * interval '1 second')",
            id_sha256.as_slice(),
            token_sha256.map(|digest| digest.as_slice()),
            csrf_token,
            lifetime.as_secs_f64()
        )
        .execute(tx.statements())
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The unexpired session whose id hashes to `id_sha256`.
    pub async fn console_session(
        &self,
        id_sha256: &[u8; 32],
    ) -> StoreResult<Option<ConsoleSession>> {
        super::statement("console_session");
        Ok(sqlx::query_as!(
            ConsoleSession,
            "SELECT token_sha256, csrf_token, expires_at FROM console_sessions
             WHERE id_sha256 = $1 AND expires_at > now()",
            id_sha256.as_slice()
        )
        .fetch_optional(self.pool())
        .await?)
    }

    /// Ends a session (logout).
    pub async fn delete_console_session(&self, id_sha256: &[u8; 32]) -> StoreResult<()> {
        super::statement("delete_console_session");
        sqlx::query!(
            "DELETE FROM console_sessions WHERE id_sha256 = $1",
            id_sha256.as_slice()
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
