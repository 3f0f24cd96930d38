//! The web console (`/ui`) in a real headless Chromium against a real API,
//! worker, PostgreSQL and Redis: log in, act on jobs and queues from the
//! pages, and check what PostgreSQL shows afterwards. Every page is
//! screenshotted at desktop and phone width into
//! `target/console-screenshots/` (docs/console.md shows them).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION};
use serde_json::json;
use taskflow::api::auth::create_token;
use taskflow::api::types::SubmitJob;
use taskflow::console::session::SESSION_COOKIE;
use taskflow::job::JobState;
use uuid::Uuid;

use crate::support::browser::Browser;
use crate::support::{TestApp, TestOptions, eventually, single_attempt};

mod pages;

/// A job of the `misbehave` plugin that fails for good on its first attempt
/// with `message`.
pub(super) fn fatal(module: &str, message: &str) -> SubmitJob {
    single_attempt(module, json!({"mode": "fatal_error", "message": message}))
}

/// Waits until job `id` is `state` in PostgreSQL.
pub(super) async fn until_state(app: &TestApp, id: Uuid, state: JobState) {
    eventually(Duration::from_secs(30), || async {
        let job = app.store().get_job(id).await.unwrap()?;
        (job.job.state == state).then_some(())
    })
    .await;
}

/// How many attempts of job `id` PostgreSQL holds.
async fn attempts_in_postgres(app: &TestApp, id: Uuid) -> usize {
    app.store()
        .list_attempts(id, None, 100)
        .await
        .unwrap()
        .expect("the job exists")
        .len()
}

#[tokio::test]
async fn a_person_logs_in_with_a_token_and_retries_a_failed_job_from_its_page() {
    let (token, hash) = create_token();
    let mut app = TestApp::start_with(TestOptions {
        api_token_sha256: vec![hash],
        ..TestOptions::default()
    })
    .await;
    app.client = app.client.clone().with_token(Some(token.clone()));
    let module = app.upload("misbehave").await;
    app.spawn_worker("w1");
    let failed = app
        .submit_with(fatal(&module, "the upstream said no"))
        .await
        .id;
    until_state(&app, failed, JobState::Dead).await;

    let browser = Browser::start(&app.url).await;
    browser.open("/ui/jobs").await;
    assert_eq!(
        browser.path().await,
        "/ui/login",
        "no session: the login form"
    );
    browser.screenshot("login").await;
    browser.type_into("#token", "tf_not_a_token").await;
    browser.click("form button[type=submit]").await;
    assert!(browser.text("#token-error").await.contains("not accepted"));
    browser.type_into("#token", &token).await;
    browser.click("form button[type=submit]").await;
    assert_eq!(browser.path().await, "/ui");

    let cookie = browser
        .client
        .get_named_cookie(SESSION_COOKIE)
        .await
        .expect("a session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    assert_ne!(
        cookie.value(),
        token,
        "the cookie is a session, not the token"
    );

    // The failed job, found through the filters, then its page.
    browser.open("/ui/jobs?state=dead").await;
    browser.click(&format!("a[href='/ui/jobs/{failed}']")).await;
    assert_eq!(browser.path().await, format!("/ui/jobs/{failed}"));
    let page = browser.page_text().await;
    assert!(page.contains("dead"), "{page}");
    assert!(page.contains("the upstream said no"), "{page}");
    // The attempt's own record in the timeline: its outcome and the error
    // that ended it.
    let attempt = browser.text(".timeline li").await;
    assert!(attempt.contains("Attempt 1 failed"), "{attempt}");
    assert!(
        attempt.contains("guest_error: the upstream said no"),
        "{attempt}"
    );
    assert_eq!(attempts_in_postgres(&app, failed).await, 1);

    browser.click("form[action$='/retry'] button").await;
    assert!(browser.text(".notice").await.contains("Retried 1 job"));
    eventually(Duration::from_secs(30), || async {
        (attempts_in_postgres(&app, failed).await == 2).then_some(())
    })
    .await;
    until_state(&app, failed, JobState::Dead).await;

    // Without the session cookie, or without the form's CSRF token, the
    // same retry is refused and PostgreSQL shows no third attempt.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let retry_url = format!("{}/ui/jobs/{failed}/retry", app.url);
    let with_session = format!("{SESSION_COOKIE}={}", cookie.value());
    let csrf = browser
        .eval("return document.querySelector('input[name=csrf]').value")
        .await;
    let csrf = csrf
        .as_str()
        .expect("the page carries a CSRF token")
        .to_owned();
    let refused = [
        (
            "no cookie",
            None,
            Some(csrf.as_str()),
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "no CSRF token",
            Some(&with_session),
            None,
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            "a wrong CSRF token",
            Some(&with_session),
            Some("0000"),
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            "a cross-site form",
            Some(&with_session),
            Some(csrf.as_str()),
            Some("cross-site"),
            StatusCode::FORBIDDEN,
        ),
    ];
    for (case, cookie, token, fetch_site, status) in refused {
        let mut request = http.post(&retry_url);
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        if let Some(site) = fetch_site {
            request = request.header("sec-fetch-site", site);
        }
        let form = token
            .map(|token| format!("csrf={token}"))
            .unwrap_or_default();
        let response = request
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{case}");
        assert!(
            response.text().await.unwrap().contains("<h1>"),
            "{case}: an HTML page that says why"
        );
    }
    let page = http
        .get(format!("{}/ui/jobs", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.status(),
        StatusCode::SEE_OTHER,
        "a page without a session"
    );
    assert_eq!(page.headers()[LOCATION], "/ui/login");
    assert_eq!(attempts_in_postgres(&app, failed).await, 2);
    assert_eq!(
        app.store()
            .get_job(failed)
            .await
            .unwrap()
            .unwrap()
            .job
            .state,
        JobState::Dead
    );

    // The same cookie and token retry it: the refusals were about them.
    let accepted = http
        .post(&retry_url)
        .header(COOKIE, &with_session)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::SEE_OTHER);

    // Logging out ends the session for every holder of the cookie.
    browser.open("/ui").await;
    browser.click("form.logout button").await;
    assert_eq!(browser.path().await, "/ui/login");
    let after_logout = http
        .get(format!("{}/ui", app.url))
        .header(COOKIE, &with_session)
        .send()
        .await
        .unwrap();
    assert_eq!(after_logout.status(), StatusCode::SEE_OTHER);
    browser.close().await;
    app.finish().await;
}

#[tokio::test]
async fn pausing_a_queue_from_the_console_stops_its_claims_until_resumed() {
    let (app, module) = TestApp::start_running("misbehave").await;
    let first = app.run(&module, json!({"mode": "succeed"})).await;
    assert_eq!(first.state, JobState::Succeeded);

    let browser = Browser::start(&app.url).await;
    browser.open("/ui/queues").await;
    browser
        .click("button[aria-label='Pause queue default']")
        .await;
    assert!(browser.text(".notice").await.contains("paused"));
    assert!(app.store().queue("default").await.unwrap().paused);

    let held = app
        .submit_many(&module, json!({"mode": "succeed"}), 3)
        .await;
    // Several dispatch intervals of a worker polling every 500 ms.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for id in &held {
        let job = app.store().get_job(*id).await.unwrap().unwrap().job;
        assert_eq!(
            job.state,
            JobState::Available,
            "a paused queue's job is not claimed"
        );
        assert_eq!(job.attempt, 0);
    }

    // The jobs list refreshes itself: a job submitted now appears without
    // a reload.
    browser.open("/ui/jobs?queue=default").await;
    let late = app.submit(&module, json!({"mode": "succeed"})).await.id;
    eventually(Duration::from_secs(15), || async {
        let found = browser
            .eval(&format!(
                "return document.querySelector(\"a[href='/ui/jobs/{late}']\") !== null"
            ))
            .await;
        (found == json!(true)).then_some(())
    })
    .await;

    browser.open("/ui/queues").await;
    browser
        .click("button[aria-label='Resume queue default']")
        .await;
    assert!(browser.text(".notice").await.contains("resumed"));
    for id in held.iter().chain([&late]) {
        assert_eq!(app.wait_final(*id).await.state, JobState::Succeeded);
    }
    browser.close().await;
    app.finish().await;
}

#[tokio::test]
async fn a_dead_letter_group_and_a_selection_of_jobs_are_retried_in_bulk_after_a_confirmation() {
    let (app, module) = TestApp::start_running("misbehave").await;
    let mut group = Vec::new();
    for _ in 0..3 {
        group.push(app.submit_with(fatal(&module, "quota exceeded")).await.id);
    }
    let trapped = app
        .submit_with(single_attempt(&module, json!({"mode": "trap"})))
        .await
        .id;
    for id in group.iter().chain([&trapped]) {
        until_state(&app, *id, JobState::Dead).await;
    }

    let kind_of = |id: Uuid| {
        let app = &app;
        async move {
            let job = app.store().get_job(id).await.unwrap().unwrap().job;
            job.last_error.unwrap().0["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (group_kind, trap_kind) = (kind_of(group[0]).await, kind_of(trapped).await);
    assert_ne!(group_kind, trap_kind);

    let browser = Browser::start(&app.url).await;
    browser.open("/ui/dead-letters").await;
    let rows = browser
        .eval("return Array.from(document.querySelectorAll('tbody tr')).map(r => r.innerText)")
        .await;
    let rows: Vec<String> = serde_json::from_value(rows).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[0].contains(&group_kind) && rows[0].contains("Retry all 3"),
        "{rows:?}"
    );
    assert!(
        rows[1].contains(&trap_kind) && rows[1].contains("Retry all 1"),
        "{rows:?}"
    );
    browser.click("tbody tr:first-child button").await;
    assert_eq!(
        browser.text("h1").await,
        format!(
            "Retry all 3 dead jobs of module {} that ended with {group_kind}?",
            &module[..12]
        )
    );
    browser.click("form.confirm button").await;
    assert!(browser.text(".notice").await.contains("Retried 3 jobs"));
    for id in &group {
        eventually(Duration::from_secs(30), || async {
            (attempts_in_postgres(&app, *id).await == 2).then_some(())
        })
        .await;
    }
    assert_eq!(
        attempts_in_postgres(&app, trapped).await,
        1,
        "the other group is left alone"
    );

    // A selection on the jobs page: the confirmation says how many.
    for id in &group {
        until_state(&app, *id, JobState::Dead).await;
    }
    browser.open("/ui/jobs?state=dead").await;
    browser.click_in_page("input[data-select-all]").await;
    assert_eq!(browser.text("#selected-count").await, "4 jobs selected.");
    browser.click("button[value=retry]").await;
    assert_eq!(browser.text("h1").await, "Retry 4 jobs?");
    browser.click("form.confirm button").await;
    assert!(browser.text(".notice").await.contains("Retried 4 jobs"));
    assert!(browser.path().await.starts_with("/ui/jobs?state=dead"));
    eventually(Duration::from_secs(30), || async {
        (attempts_in_postgres(&app, trapped).await == 2).then_some(())
    })
    .await;
    browser.close().await;
    app.finish().await;
}
