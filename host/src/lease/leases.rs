//! Per-job leases in Redis ([`Leases`]): the keys, the scripts that renew,
//! restore, revoke and release them, and the epoch by which the rescuer
//! tells a restarted Redis (the module docs of `lease` list the keys).

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use uuid::Uuid;

use super::{Redis, RedisError};
use crate::store::LeaseRef;

/// The attempt a lease key names, and how long until the key expires unless
/// renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// The fencing token in the key.
    pub lease_token: i64,
    /// Time to live left on the key.
    pub expires_in: Duration,
}

/// What a renewal found for one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The key held our token; its TTL is reset.
    Renewed,
    /// The key is gone (Redis was flushed or restarted, or we were paused
    /// past the TTL). Nothing was written: the caller confirms with
    /// PostgreSQL that the lease is still current, then [`Leases::restore`]s it.
    Missing,
    /// The key holds another token, or a marker (`revoked:` or
    /// `released:`): the lease is lost.
    Lost,
}

/// Per-job leases in Redis.
///
/// A lease is the key `{prefix}lease:{job_id}` holding the attempt's fencing
/// token with a TTL. The worker running the attempt renews it every third
/// of the TTL; when the worker dies the key expires and the rescuer, which
/// only acts once PostgreSQL's `lease_expires_at` has also passed, ends the
/// attempt. The token itself always comes from PostgreSQL, so wiping Redis
/// can never make a token repeat.
#[derive(Debug, Clone)]
pub struct Leases {
    redis: Redis,
    ttl: Duration,
}

/// Renews each lease whose key still holds its token and reports the others
/// as missing or lost; writes nothing else.
/// KEYS: lease keys. ARGV[1]: TTL in ms; ARGV[1 + i]: token of KEYS[i].
/// Returns one code per key: 1 renewed, 2 missing, 0 lost.
static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
for i, key in ipairs(KEYS) do
  local held = redis.call('GET', key)
  if held == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    out[i] = 1
  elseif not held then
    out[i] = 2
  else
    out[i] = 0
  end
end
return out
",
    )
});

/// Lua: the attempt a lease key's value speaks for. A key holds either the
/// token of the attempt holding the lease, or a marker left when an attempt
/// was revoked (`revoked:<token>`) or released its lease
/// (`released:<token>`). Returns the token and whether it is a marker.
const OWNER_FUNCTION: &str = r"
local function owner(held)
  if not held then return nil, false end
  local marked = string.match(held, '^%a+:(%d+)$')
  if marked then return tonumber(marked), true end
  return tonumber(held), false
end
";

/// Writes each lease key that is missing, already holds its token, or speaks
/// for an older attempt (its plain token, or a marker it left), and reports a
/// key speaking for this attempt's end or for a newer attempt as lost. Used
/// only for leases known current (fresh claims, or confirmed by PostgreSQL).
/// KEYS: lease keys. ARGV[1]: TTL in ms; ARGV[1 + i]: token of KEYS[i].
/// Returns one code per key: 1 held, 0 lost.
static RESTORE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{OWNER_FUNCTION}{}",
        r"
local out = {}
for i, key in ipairs(KEYS) do
  local token = tonumber(ARGV[i + 1])
  local held = redis.call('GET', key)
  local holder, marker = owner(held)
  if not held or (holder == token and not marker) or (holder and holder < token) then
    redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"
    ))
});

/// Marks attempts' leases as revoked (`revoked:<token>`) unless the key
/// speaks for a newer attempt. The marker stops its own attempt and older
/// ones; a newer attempt of the job may overwrite it.
/// KEYS: lease keys. ARGV[1]: TTL in ms; ARGV[1 + i]: token of KEYS[i].
static REVOKE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{OWNER_FUNCTION}{}",
        r"
for i, key in ipairs(KEYS) do
  local token = tonumber(ARGV[i + 1])
  local holder = owner(redis.call('GET', key))
  if not holder or holder <= token then
    redis.call('SET', key, 'revoked:' .. ARGV[i + 1], 'PX', ARGV[1])
  end
end
return 0
"
    ))
});

/// Replaces each lease key that still holds its token with a release marker
/// (`released:<token>`) for one TTL, so an older attempt that comes back
/// cannot write its key over it; a newer attempt's key is left alone.
/// KEYS: lease keys. ARGV[1]: TTL in ms; ARGV[1 + i]: token of KEYS[i].
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('SET', key, 'released:' .. ARGV[i + 1], 'PX', ARGV[1])
  end
end
return 0
",
    )
});

/// Returns how long (ms, by Redis's clock) this server has held the epoch
/// key, and starts it again from zero when the key is missing (a flush, or
/// a restart without persistence) or was written by another server, or by
/// this one in another life: its `run_id` changes at a restart and its
/// `master_replid` at a promotion (a cluster failover, where the promoted
/// replica may lack writes its old master accepted, ADR 006), or when
/// Redis's clock now reads earlier than the key's start (a clock stepped
/// back: clamping the negative age to zero would keep the rescuer in its
/// grace period for as long as the step). The key holds
/// `<ms>:<run_id>-<master_replid>`; where `INFO` is not allowed in scripts
/// that part is `-` and only a missing key counts. KEYS[1]: the epoch
/// key.
static EPOCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local function field(section, name)
  local ok, info = pcall(redis.call, 'INFO', section)
  return ok and string.match(info, name .. ':(%x+)') or ''
end
local server = field('server', 'run_id') .. '-' .. field('replication', 'master_replid')
local held = redis.call('GET', KEYS[1])
local since, held_by
if held then since, held_by = string.match(held, '^(%d+):?([%x%-]*)$') end
if not since or held_by ~= server or now_ms < tonumber(since) then
  redis.call('SET', KEYS[1], now_ms .. ':' .. server)
  return 0
end
return now_ms - tonumber(since)
",
    )
});

impl Leases {
    /// Leases in `redis` with the given TTL.
    pub fn new(redis: Redis, ttl: Duration) -> Self {
        Self { redis, ttl }
    }

    /// The Redis these leases live in.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often a holder renews its leases: three renewals fit in one TTL,
    /// so one lost renewal never costs a lease.
    pub fn renew_interval(&self) -> Duration {
        self.ttl / 3
    }

    /// Runs one of the per-lease scripts over `leases` in one round trip:
    /// KEYS are their lease keys, ARGV[1] `ttl` in ms and ARGV[1 + i] the
    /// token of KEYS[i], the calling convention all four share.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        ttl: Duration,
        leases: &[LeaseRef],
    ) -> Result<T, RedisError> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(ttl.as_millis() as u64);
        for lease in leases {
            invocation
                .key(self.redis.lease_key(lease.job_id))
                .arg(lease.lease_token);
        }
        let mut connection = self.redis.connection.clone();
        Ok(invocation.invoke_async(&mut connection).await?)
    }

    /// Renews `leases` in one round trip; see [`Renewal`].
    pub async fn renew(&self, leases: &[LeaseRef]) -> Result<Vec<Renewal>, RedisError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let codes: Vec<i64> = self.invoke(&RENEW_SCRIPT, self.ttl, leases).await?;
        Ok(codes
            .into_iter()
            .map(|code| match code {
                1 => Renewal::Renewed,
                2 => Renewal::Missing,
                _ => Renewal::Lost,
            })
            .collect())
    }

    /// Writes the keys of leases whose holder knows them current: fresh
    /// claims, and leases PostgreSQL confirmed after a renewal found them
    /// [`Renewal::Missing`]. Returns, per lease, whether it is held; a key
    /// another attempt (or a revocation) wrote meanwhile means it is lost.
    pub async fn restore(&self, leases: &[LeaseRef]) -> Result<Vec<bool>, RedisError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let codes: Vec<i64> = self.invoke(&RESTORE_SCRIPT, self.ttl, leases).await?;
        Ok(codes.into_iter().map(|code| code == 1).collect())
    }

    /// Marks the keys of finished attempts as released, in one round trip.
    pub async fn release(&self, leases: &[LeaseRef]) -> Result<(), RedisError> {
        if leases.is_empty() {
            return Ok(());
        }
        let () = self.invoke(&RELEASE_SCRIPT, self.ttl, leases).await?;
        Ok(())
    }

    /// Marks attempts' leases as revoked (unless the key speaks for a newer
    /// attempt), so a worker still running one learns at its next
    /// renewal that it must stop: used when a running job is cancelled, and
    /// by the rescuer for the attempts it ended.
    ///
    /// The marker lasts one TTL, or `longest_granted` (the longest TTL
    /// their claims granted, `jobs.lease_ttl_ms`) if that is longer: a
    /// worker given a longer TTL than this process renews less often, and
    /// an attempt whose first round has not yet written its key would
    /// write it over a marker that expired first (`RESTORE_SCRIPT`).
    pub async fn revoke(
        &self,
        leases: &[LeaseRef],
        longest_granted: Option<Duration>,
    ) -> Result<(), RedisError> {
        if leases.is_empty() {
            return Ok(());
        }
        let ttl = longest_granted.map_or(self.ttl, |granted| granted.max(self.ttl));
        let () = self.invoke(&REVOKE_SCRIPT, ttl, leases).await?;
        Ok(())
    }

    /// Who holds each job's lease key, if anyone, and until when, in one
    /// round trip.
    pub async fn holders(&self, job_ids: &[Uuid]) -> Result<Vec<Option<Holder>>, RedisError> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in job_ids {
            let key = self.redis.lease_key(*id);
            pipe.get(&key).pttl(&key);
        }
        let mut connection = self.redis.connection.clone();
        let values: Vec<(Option<String>, i64)> = pipe.query_async(&mut connection).await?;
        Ok(values
            .into_iter()
            .map(|(value, ttl_ms)| {
                let lease_token = value?.parse().ok()?;
                Some(Holder {
                    lease_token,
                    expires_in: Duration::from_millis(ttl_ms.max(0) as u64),
                })
            })
            .collect())
    }

    /// How long this Redis has held TaskFlow's state, by Redis's clock.
    ///
    /// After a flush, a restart or a failover the answer starts again from
    /// zero. Until
    /// it exceeds one lease TTL (the attempt's own, if its claim granted a
    /// longer one), a missing lease key proves nothing (its holder may not
    /// have restored it yet), so the rescuer waits.
    pub async fn redis_age(&self) -> Result<Duration, RedisError> {
        let mut connection = self.redis.connection.clone();
        let age_ms: i64 = EPOCH_SCRIPT
            .key(self.redis.key("epoch"))
            .invoke_async(&mut connection)
            .await?;
        Ok(Duration::from_millis(age_ms.max(0) as u64))
    }
}
