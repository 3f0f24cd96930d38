//! The store calls behind the console's pages, one by one against a real
//! PostgreSQL: dead jobs grouped and requeued a group at a time, a
//! module's jobs searched in bounded steps, and the id-prefix filter.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use taskflow::job::{AfterFailure, AttemptEnd, Failure, FailureKind, IdPrefix, NewJob};
use taskflow::store::{ClaimPath, DatabasePooler, JobFilter, Store};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::{finished, new_job, test_database, until_no_clients};

const TTL: Duration = Duration::from_secs(30);

/// Submits jobs of `module`, claims them and ends each dead with `kind`
/// and a message naming the job, `padding` bytes long at least.
async fn dead_jobs(
    store: &Store,
    module: &str,
    kind: FailureKind,
    count: usize,
    padding: usize,
) -> Vec<Uuid> {
    let jobs: Vec<NewJob> = (0..count).map(|_| new_job(module)).collect();
    store.insert_jobs(&jobs).await.unwrap();
    let claimed = store
        .claim("default", "w1", count, TTL, ClaimPath::Plain)
        .await
        .unwrap()
        .jobs;
    assert_eq!(claimed.len(), count);
    let ends: Vec<_> = claimed
        .iter()
        .map(|job| {
            let end = AttemptEnd::Failed {
                failure: Failure::new(kind, format!("{} failed{:padding$}", job.id, "")),
                next: AfterFailure::Dead,
            };
            finished(job, "w1", end)
        })
        .collect();
    store.finish_if_lease_matches(&ends).await.unwrap();
    jobs.iter().map(|job| job.id).collect()
}

async fn module(store: &Store, byte: char) -> String {
    let hash = byte.to_string().repeat(64);
    store.insert_module(&hash, b"\0asm").await.unwrap();
    hash
}

/// Each group's example message is the newest job's, read once. The
/// statement used to gather every message of a group (up to the scan
/// limit's worth, 8 KiB each for guests that fill theirs) into an array and
/// sort it: tens of megabytes, spilled to disk, at every view of the page.
#[tokio::test(flavor = "multi_thread")]
async fn grouping_dead_jobs_does_not_gather_their_messages() {
    let db = test_database().await;
    let a = module(db.store(), 'a').await;
    let ids = dead_jobs(db.store(), &a, FailureKind::GuestError, 2000, 8 * 1024).await;
    db.store().close().await;
    let mut admin = PgConnection::connect(&taskflow_testkit::server_database_url())
        .await
        .unwrap();
    let name = db.name();
    let before = statistic_once_alone(&mut admin, name, "temp_bytes").await;
    sqlx::query(&format!("ALTER DATABASE {name} SET work_mem = '1MB'"))
        .execute(&mut admin)
        .await
        .unwrap();
    let store = Store::connect_lazy(db.url(), 1, DatabasePooler::None).unwrap();

    let groups = store.dead_letter_groups(10_000).await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].jobs, 2000);
    let example = groups[0].example_message.as_deref().unwrap();
    assert!(example.starts_with(&format!("{} failed", ids[1999])));

    store.close().await;
    let after = statistic_once_alone(&mut admin, name, "temp_bytes").await;
    assert_eq!(after - before, 0, "the grouping spilled to disk");
    admin.close().await.unwrap();
    db.drop_database().await.unwrap();
}

/// `statistic`, an expression over database `name`'s row of
/// `pg_stat_database`, once the database has no client (`admin` is
/// connected to another): a backend reports its counts by the time it has
/// left.
async fn statistic_once_alone(admin: &mut PgConnection, name: &str, statistic: &str) -> i64 {
    until_no_clients(admin, name).await;
    sqlx::query_scalar(&format!(
        "SELECT ({statistic})::bigint FROM pg_stat_database WHERE datname = $1"
    ))
    .bind(name)
    .fetch_one(admin)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_jobs_group_by_module_and_error_and_a_group_is_requeued_whole_once() {
    let db = test_database().await;
    let store = db.store();
    let (a, b) = (module(store, 'a').await, module(store, 'b').await);
    let timeouts = dead_jobs(store, &a, FailureKind::Timeout, 3, 0).await;
    let a_errors = dead_jobs(store, &a, FailureKind::GuestError, 2, 0).await;
    let b_timeouts = dead_jobs(store, &b, FailureKind::Timeout, 1, 0).await;

    let groups = store.dead_letter_groups(100).await.unwrap();
    let summary: Vec<(String, Option<String>, i64)> = groups
        .iter()
        .map(|group| {
            (
                group.module_hash.clone(),
                group.error_kind.clone(),
                group.jobs,
            )
        })
        .collect();
    let kind = |kind: FailureKind| Some(kind.code().to_owned());
    assert_eq!(
        summary,
        vec![
            (a.clone(), kind(FailureKind::Timeout), 3),
            (a.clone(), kind(FailureKind::GuestError), 2),
            (b.clone(), kind(FailureKind::Timeout), 1),
        ],
        "largest group first"
    );
    assert_eq!(
        groups[0].example_message.as_deref(),
        Some(format!("{} failed", timeouts[2]).as_str()),
        "the newest job's message"
    );
    let newest_two = store.dead_letter_groups(2).await.unwrap();
    assert_eq!(
        newest_two.iter().map(|group| group.jobs).sum::<i64>(),
        2,
        "only the newest jobs are grouped"
    );

    // Two at a time, until none is left: the group's three, no other.
    let died_by = chrono::Utc::now();
    let code = FailureKind::Timeout.code();
    let passes = requeue_group(store, &a, code, died_by, 2).await;
    assert_eq!(
        passes,
        vec![
            vec![("default".to_owned(), 2)],
            vec![("default".to_owned(), 1)]
        ]
    );
    for id in &timeouts {
        let job = store.get_job(*id).await.unwrap().unwrap().job;
        assert_eq!(job.state, taskflow::job::JobState::Available);
        assert_eq!(job.attempt_base, job.attempt, "a fresh set of attempts");
    }
    for id in a_errors.iter().chain(&b_timeouts) {
        let job = store.get_job(*id).await.unwrap().unwrap().job;
        assert_eq!(job.state, taskflow::job::JobState::Dead, "another group");
    }

    // A job of the group that dies again after `died_by` is not taken twice.
    let again = store
        .claim("default", "w1", 3, TTL, ClaimPath::Plain)
        .await
        .unwrap()
        .jobs;
    let ends: Vec<_> = again
        .iter()
        .map(|job| {
            let end = AttemptEnd::Failed {
                failure: Failure::new(FailureKind::Timeout, "again"),
                next: AfterFailure::Dead,
            };
            finished(job, "w1", end)
        })
        .collect();
    store.finish_if_lease_matches(&ends).await.unwrap();
    assert_eq!(
        requeue_group(store, &a, code, died_by, 10).await,
        Vec::<Vec<(String, i64)>>::new()
    );
    db.drop_database().await.unwrap();
}

/// Requeues the dead jobs of `module` that died of `code` by `died_by`,
/// `batch` at a time, as the console does; what each pass requeued.
async fn requeue_group(
    store: &Store,
    module: &str,
    code: &str,
    died_by: chrono::DateTime<chrono::Utc>,
    batch: i64,
) -> Vec<Vec<(String, i64)>> {
    let mut passes = Vec::new();
    let mut after = None;
    loop {
        let pass = store
            .requeue_dead_group(module, Some(code), died_by, after, batch)
            .await
            .unwrap();
        let Some(last_taken) = pass.last_taken else {
            return passes;
        };
        after = Some(last_taken);
        passes.push(pass.requeued);
    }
}

/// A group's retry never reads again the dead jobs it went past: each
/// pass starts after the last job the one before took. Every pass used to
/// search from the oldest dead job again, reading the older dead jobs of
/// other groups once per pass: a million-job retry amid old dead jobs read
/// them thousands of times over.
#[tokio::test(flavor = "multi_thread")]
async fn retrying_a_group_never_reads_again_the_dead_jobs_it_went_past() {
    const OTHERS: i64 = 2000;
    const GROUP: i64 = 100;
    let db = test_database().await;
    let (a, b) = (module(db.store(), 'a').await, module(db.store(), 'b').await);
    // The other group's jobs come first, where a search from the oldest
    // read them again. (Newer ones would be read again by each pass here:
    // on a table this small PostgreSQL sorts the dead jobs past the cursor
    // rather than walk an index in order; see `requeue_dead_group`.)
    dead_jobs(db.store(), &b, FailureKind::Timeout, OTHERS as usize, 0).await;
    dead_jobs(db.store(), &a, FailureKind::Timeout, GROUP as usize, 0).await;
    db.store().close().await;
    // Reads of `jobs` by an autovacuum would count too.
    let mut tables = PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("ALTER TABLE jobs SET (autovacuum_enabled = false)")
        .execute(&mut tables)
        .await
        .unwrap();
    tables.close().await.unwrap();
    let mut admin = PgConnection::connect(&taskflow_testkit::server_database_url())
        .await
        .unwrap();
    let name = db.name();
    let rows_read = "tup_returned + tup_fetched";
    let before = statistic_once_alone(&mut admin, name, rows_read).await;
    let store = Store::connect_lazy(db.url(), 1, DatabasePooler::None).unwrap();

    let died_by = chrono::Utc::now();
    let passes = requeue_group(&store, &a, FailureKind::Timeout.code(), died_by, 5).await;
    assert_eq!(passes.len(), 20);
    assert!(
        passes
            .iter()
            .all(|pass| pass == &[("default".to_owned(), 5)])
    );

    store.close().await;
    // A job read counts about twice (its index entry and its row), and the
    // connection's own catalog reads come on top: under 4 times the jobs
    // when measured, 40 times when each pass read the older ones again.
    let read = statistic_once_alone(&mut admin, name, rows_read).await - before;
    assert!(
        read < 8 * (OTHERS + GROUP),
        "{read} rows read to retry {GROUP} jobs past {OTHERS} dead jobs of another group"
    );
    admin.close().await.unwrap();
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_modules_jobs_are_searched_in_bounded_steps_and_jobs_found_by_the_start_of_their_id() {
    let db = test_database().await;
    let store = db.store();
    let (a, b) = (module(store, 'a').await, module(store, 'b').await);
    // Oldest first: 2 of b, 5 of a, 1 of b.
    let old_b: Vec<NewJob> = (0..2).map(|_| new_job(&b)).collect();
    let of_a: Vec<NewJob> = (0..5).map(|_| new_job(&a)).collect();
    let new_b = vec![new_job(&b)];
    for jobs in [&old_b, &of_a, &new_b] {
        store.insert_jobs(jobs).await.unwrap();
    }
    let of_b: Vec<NewJob> = old_b.iter().chain(&new_b).cloned().collect();

    let listed = |filter: JobFilter| async move {
        store
            .list_jobs(&JobFilter {
                limit: 50,
                ..filter
            })
            .await
            .unwrap()
            .into_iter()
            .map(|job| job.id)
            .collect::<Vec<_>>()
    };
    let newest_first = |jobs: &[NewJob]| jobs.iter().rev().map(|job| job.id).collect::<Vec<_>>();
    let search = |before: Option<Uuid>, scan: i64| {
        let b = b.clone();
        async move {
            let filter = JobFilter {
                before,
                limit: 2,
                ..JobFilter::default()
            };
            let page = store.list_module_jobs(&filter, &b, scan).await.unwrap();
            let ids: Vec<Uuid> = page.jobs.iter().map(|job| job.id).collect();
            (ids, page.resume_before)
        }
    };
    // Unbounded enough: a full page, resumed from its last job as usual.
    let (ids, resume) = search(None, 100).await;
    assert_eq!(ids, newest_first(&of_b)[..2].to_vec());
    assert_eq!(resume, None);
    // Three jobs read at a time: the newest b, then a short page that says
    // where it stopped (the third newest, of a), then the rest.
    let (ids, resume) = search(None, 3).await;
    assert_eq!(ids, vec![new_b[0].id]);
    assert_eq!(resume, Some(of_a[3].id));
    let (ids, resume) = search(resume, 3).await;
    assert_eq!(ids, Vec::<Uuid>::new());
    assert_eq!(resume, Some(of_a[0].id));
    let (ids, resume) = search(resume, 3).await;
    assert_eq!(ids, newest_first(&old_b));
    assert_eq!(resume, None, "the oldest job was read: nothing left");
    let whole = of_a[2].id.to_string();
    let exact = IdPrefix::parse("id", &whole).unwrap();
    assert_eq!(
        listed(JobFilter {
            id_prefix: Some(exact),
            ..JobFilter::default()
        })
        .await,
        vec![of_a[2].id]
    );
    // UUIDv7 ids of one millisecond share their first 12 digits.
    let prefix = IdPrefix::parse("id", &whole[..8]).unwrap();
    let expected: Vec<Uuid> = newest_first(&of_a)
        .into_iter()
        .chain(newest_first(&of_b))
        .filter(|id| prefix.matches(*id))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .rev()
        .collect();
    assert!(expected.contains(&of_a[2].id));
    assert_eq!(
        listed(JobFilter {
            id_prefix: Some(prefix),
            ..JobFilter::default()
        })
        .await,
        expected
    );

    db.drop_database().await.unwrap();
}

/// A short page's resume point is the oldest job its own search read, so
/// jobs inserted while the page is made neither repeat nor hide jobs on
/// the next. Jobs arrive in pairs of `a` and `b` while the newest ten are
/// searched for `a`'s, again and again: a resume point found after the
/// search, two or more jobs later, would be younger than the search's
/// oldest `a`, and the next page would show that job again.
#[tokio::test(flavor = "multi_thread")]
async fn a_modules_next_page_resumes_where_its_own_search_stopped_while_jobs_arrive() {
    let db = test_database().await;
    let store = db.store();
    let (a, b) = (module(store, 'a').await, module(store, 'b').await);
    let pair = {
        let (a, b) = (a.clone(), b.clone());
        move || [new_job(&a), new_job(&b)]
    };
    for _ in 0..10 {
        store.insert_jobs(&pair()).await.unwrap();
    }
    let arriving = CancellationToken::new();
    let pairs = Arc::new(AtomicUsize::new(0));
    let inserter = tokio::spawn({
        let (store, arriving, pairs) = (store.clone(), arriving.clone(), pairs.clone());
        async move {
            while !arriving.is_cancelled() {
                store.insert_jobs(&pair()).await.unwrap();
                pairs.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let page = |before: Option<Uuid>| {
        let a = a.clone();
        async move {
            let filter = JobFilter {
                before,
                limit: 10,
                ..JobFilter::default()
            };
            store.list_module_jobs(&filter, &a, 10).await.unwrap()
        }
    };
    // However fast commits are here, pages are made while 100 pairs arrive.
    let mut made = 0;
    while made < 300 || pairs.load(Ordering::Relaxed) < 100 {
        assert!(!inserter.is_finished(), "the inserter stopped");
        let first = page(None).await;
        let resume = first
            .resume_before
            .expect("five of a among the ten read: a short page");
        let next = page(Some(resume)).await;
        let shown: Vec<Uuid> = first.jobs.iter().map(|job| job.id).collect();
        for job in &next.jobs {
            assert!(
                !shown.contains(&job.id),
                "{} was on the first page too, which said to resume before {resume}",
                job.id
            );
        }
        assert_eq!(first.jobs.len(), 5);
        assert_eq!(next.jobs.len(), 5, "the next ten read hold five of a");
        made += 1;
    }
    arriving.cancel();
    inserter.await.unwrap();
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_console_session_is_found_by_its_id_digest_until_it_expires_or_ends() {
    let db = test_database().await;
    let store = db.store();
    let (id, expired, token) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    store
        .create_console_session(&expired, None, "csrf-old", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        store.console_session(&expired).await.unwrap(),
        None,
        "expired"
    );
    store
        .create_console_session(&id, Some(&token), "csrf-1", Duration::from_secs(60))
        .await
        .unwrap();
    let session = store.console_session(&id).await.unwrap().expect("stored");
    assert_eq!(session.token_sha256.as_deref(), Some(token.as_slice()));
    assert_eq!(session.csrf_token, "csrf-1");
    assert!(session.expires_at > chrono::Utc::now() + chrono::Duration::seconds(50));
    assert_eq!(store.console_session(&[9u8; 32]).await.unwrap(), None);
    store.delete_console_session(&id).await.unwrap();
    assert_eq!(
        store.console_session(&id).await.unwrap(),
        None,
        "logged out"
    );
    db.drop_database().await.unwrap();
}
