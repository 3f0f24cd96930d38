//! `GET /ui`: every queue at a glance, the last hour's activity as a
//! chart, and the workers alive now. Reads counters, never the jobs table
//! (store/queue_stats.rs), so it costs the same over any number of jobs.

use askama::Template;
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use super::ConsoleQuery;
use super::session::Session;
use super::view::{Chrome, ConsoleError, Done, duration, render};
use crate::api::ApiState;
use crate::job::JobState;
use crate::lease::WorkerPresence;
use crate::queue::{Activity, QueueStats};

/// One queue's line of the overview.
struct QueueLine {
    name: String,
    paused: bool,
    stats: QueueStats,
    max_running: Option<u32>,
}

impl QueueLine {
    /// Jobs in `state`, by its name in the template.
    fn jobs(&self, state: &str) -> u64 {
        state
            .parse::<JobState>()
            .map_or(0, |state| self.stats.jobs.get(state))
    }

    /// How long the oldest available job has waited, or a dash.
    fn oldest_waiting(&self) -> String {
        self.stats
            .oldest_available_age
            .map_or_else(|| "—".to_owned(), duration)
    }
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct Overview {
    chrome: Chrome,
    queues: Vec<QueueLine>,
    chart: ActivityChart,
    workers: Result<Vec<WorkerPresence>, String>,
    now: DateTime<Utc>,
}

impl Overview {
    fn seen(&self, worker: &WorkerPresence) -> String {
        super::view::ago(worker.seen_at, self.now)
    }
}

/// `GET /ui`.
pub async fn page(
    State(state): State<ApiState>,
    Extension(session): Extension<Session>,
    ConsoleQuery(done): ConsoleQuery<Done>,
) -> Result<Response, ConsoleError> {
    let queues = state
        .read(|store| async move { store.queues_with_stats().await })
        .await?;
    let activity = state
        .read(|store| async move { store.activity_by_minute().await })
        .await?;
    let now = Utc::now();
    let workers = state
        .redis
        .recent_workers(now)
        .await
        .map_err(|error| format!("Redis did not answer ({error}); workers cannot be listed."));
    let page = Overview {
        chrome: session
            .chrome(state.tokens.is_open(), "overview")
            .with_notice(&done),
        queues: queues
            .into_iter()
            .map(|(record, stats)| QueueLine {
                max_running: record.settings.limits.max_running.map(|limit| limit.get()),
                paused: record.paused,
                name: record.name,
                stats,
            })
            .collect(),
        chart: ActivityChart::last_hour(&activity, now),
        workers,
        now,
    };
    Ok(render(StatusCode::OK, &page))
}

/// Starts, successes and failures per minute over the last hour, drawn as
/// an inline SVG (no script, nothing fetched).
pub struct ActivityChart {
    /// One entry per minute, oldest first, the current minute last.
    minutes: Vec<Activity>,
    /// The hour's totals.
    pub total: Activity,
}

/// Chart geometry, in SVG user units.
const CHART_WIDTH: u32 = 600;
const CHART_HEIGHT: u32 = 140;
const CHART_MINUTES: usize = 60;

impl ActivityChart {
    /// The 60 minutes up to `now`'s, from per-minute rows (minutes without
    /// a row had no activity).
    pub fn last_hour(rows: &[(DateTime<Utc>, Activity)], now: DateTime<Utc>) -> Self {
        let current = now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now);
        let mut minutes = vec![Activity::default(); CHART_MINUTES];
        let mut total = Activity::default();
        for (minute, activity) in rows {
            let behind = (current - *minute).num_minutes();
            if let Ok(behind) = usize::try_from(behind)
                && behind < CHART_MINUTES
            {
                minutes[CHART_MINUTES - 1 - behind] += *activity;
                total += *activity;
            }
        }
        Self { minutes, total }
    }

    /// The largest per-minute count, the top of the scale.
    fn peak(&self) -> u64 {
        self.minutes
            .iter()
            .map(|minute| minute.started.max(minute.succeeded).max(minute.failed))
            .max()
            .unwrap_or(0)
            .max(1)
    }

    /// The `points` of one series' polyline.
    fn points(&self, series: impl Fn(&Activity) -> u64) -> String {
        let peak = self.peak() as f64;
        let step = f64::from(CHART_WIDTH) / (CHART_MINUTES - 1) as f64;
        self.minutes
            .iter()
            .enumerate()
            .map(|(index, minute)| {
                let x = index as f64 * step;
                let y = f64::from(CHART_HEIGHT) * (1.0 - series(minute) as f64 / peak);
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn started_points(&self) -> String {
        self.points(|minute| minute.started)
    }

    fn succeeded_points(&self) -> String {
        self.points(|minute| minute.succeeded)
    }

    fn failed_points(&self) -> String {
        self.points(|minute| minute.failed)
    }

    fn view_box(&self) -> String {
        format!("0 0 {CHART_WIDTH} {CHART_HEIGHT}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_places_each_minute_and_drops_older_ones() {
        let now = "2026-12-03T20:15:30Z".parse::<DateTime<Utc>>().unwrap();
        let minute = |text: &str| text.parse::<DateTime<Utc>>().unwrap();
        let activity = |started| Activity {
            started,
            succeeded: 0,
            failed: 0,
        };
        let chart = ActivityChart::last_hour(
            &[
                (minute("2026-12-03T19:10:00Z"), activity(100)),
                (minute("2026-12-03T19:16:00Z"), activity(2)),
                (minute("2026-12-03T20:15:00Z"), activity(4)),
            ],
            now,
        );
        assert_eq!(chart.total.started, 6, "the minute an hour back is dropped");
        assert_eq!(chart.peak(), 4);
        let points = chart.started_points();
        let points: Vec<&str> = points.split(' ').collect();
        assert_eq!(points.len(), 60);
        assert_eq!(
            points[0], "0.0,70.0",
            "19:16 is the first minute, at half height"
        );
        assert_eq!(
            points[59], "600.0,0.0",
            "the current minute is last, at the top"
        );
        assert_eq!(points[30], "305.1,140.0");
    }
}
