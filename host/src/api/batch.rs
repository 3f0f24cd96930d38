//! Reading `POST /v1/jobs/batch`'s body with its job count capped
//! ([`SubmitBatch`]'s `BodyLimit::parse`, api/jobs.rs).
//!
//! The body's byte limit alone does not bound what parsing it builds: a
//! 64 MiB body of `{"module":""}` holds 4.8 million jobs, over a gigabyte as
//! `SubmitJob`s, many times what the request budget reserves for it
//! (api/body.rs). So the list is read job by job, and past the limit the
//! jobs built so far are dropped and the rest of the list is only counted,
//! which allocates nothing, for the 413 to say how many there were.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::types::SubmitJob;

/// A batch's jobs, or how many it held when that was over the limit.
pub(super) enum CappedJobs {
    /// At most the limit.
    Within(Vec<SubmitJob>),
    /// More than the limit: this many.
    Over(usize),
}

/// Reads `{"jobs": [...]}` (no other field) into [`CappedJobs`] of at most
/// `max_jobs`.
pub(super) struct CappedBatch {
    pub max_jobs: usize,
}

impl<'de> DeserializeSeed<'de> for CappedBatch {
    type Value = CappedJobs;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<CappedJobs, D::Error> {
        deserializer.deserialize_struct("SubmitBatch", &["jobs"], self)
    }
}

impl<'de> Visitor<'de> for CappedBatch {
    type Value = CappedJobs;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a batch, {\"jobs\": [...]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CappedJobs, A::Error> {
        let mut jobs = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "jobs" {
                return Err(de::Error::unknown_field(&key, &["jobs"]));
            }
            if jobs.is_some() {
                return Err(de::Error::duplicate_field("jobs"));
            }
            jobs = Some(map.next_value_seed(CappedList {
                max_jobs: self.max_jobs,
            })?);
        }
        jobs.ok_or_else(|| de::Error::missing_field("jobs"))
    }
}

/// The `jobs` list of [`CappedBatch`].
struct CappedList {
    max_jobs: usize,
}

impl<'de> DeserializeSeed<'de> for CappedList {
    type Value = CappedJobs;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<CappedJobs, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for CappedList {
    type Value = CappedJobs;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a list of jobs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut list: A) -> Result<CappedJobs, A::Error> {
        let mut jobs = Vec::with_capacity(list.size_hint().unwrap_or(0).min(self.max_jobs));
        while let Some(job) = list.next_element::<SubmitJob>()? {
            if jobs.len() == self.max_jobs {
                drop(jobs);
                let mut count = self.max_jobs + 1;
                while list.next_element::<IgnoredAny>()?.is_some() {
                    count += 1;
                }
                return Ok(CappedJobs::Over(count));
            }
            jobs.push(job);
        }
        Ok(CappedJobs::Within(jobs))
    }
}
