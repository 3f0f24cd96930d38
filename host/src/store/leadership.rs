//! The term of the maintenance leader (`maintenance_leader`).

use std::time::Duration;

use super::{Store, StoreResult, millis};

impl Store {
    /// Makes `candidate` the holder of `leadership` for `term`, if it holds it
    /// already (a renewal) or nobody's term is running (an election).
    /// Returns whether `candidate` now holds it.
    ///
    /// Guard: the row's `leader_id = candidate OR expires_at < now()`; the
    /// primary key makes concurrent candidates take turns, and one wins.
    pub async fn elect_or_renew_leader(
        &self,
        leadership: &str,
        candidate: &str,
        term: Duration,
    ) -> StoreResult<bool> {
        super::statement("elect_or_renew_leader");
        let won = sqlx::query_scalar!(
            "INSERT INTO maintenance_leader (name, leader_id, elected_at, expires_at)
             VALUES ($1, $2, now(), now() + $3 * interval '1 millisecond')
             ON CONFLICT (name) DO UPDATE
             SET leader_id = EXCLUDED.leader_id,
                 elected_at = CASE WHEN maintenance_leader.leader_id = EXCLUDED.leader_id
                                   THEN maintenance_leader.elected_at ELSE now() END,
                 expires_at = EXCLUDED.expires_at
             WHERE maintenance_leader.leader_id = EXCLUDED.leader_id
                OR maintenance_leader.expires_at < now()
             RETURNING true AS \"won!\"",
            leadership,
            candidate,
            millis(term) as f64
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(won.is_some())
    }

    /// Ends `leader`'s term of `leadership` now, so another worker is
    /// elected at its next try rather than when the term would have run
    /// out. Guard: `leader_id = leader`.
    pub async fn resign_leader(&self, leadership: &str, leader: &str) -> StoreResult<()> {
        super::statement("resign_leader");
        sqlx::query!(
            "DELETE FROM maintenance_leader WHERE name = $1 AND leader_id = $2",
            leadership,
            leader
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Who holds `leadership` now, if anyone's term is running.
    pub async fn current_leader(&self, leadership: &str) -> StoreResult<Option<String>> {
        super::statement("current_leader");
        Ok(sqlx::query_scalar!(
            "SELECT leader_id FROM maintenance_leader WHERE name = $1 AND expires_at > now()",
            leadership
        )
        .fetch_optional(self.pool())
        .await?)
    }
}
