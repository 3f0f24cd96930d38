//! The console's pages at desktop and phone width, every control labelled
//! and reachable by keyboard, their answer to a query they cannot read,
//! and a bulk action's return address.

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION};
use serde_json::json;
use taskflow::job::JobState;

use super::{fatal, until_state};
use crate::support::TestApp;
use crate::support::browser::Browser;

/// The script that finds every control without an accessible name, every
/// one that cannot take focus, and whether the page overflows sideways.
const PAGE_CHECK: &str = r#"
const controls = Array.from(document.querySelectorAll(
  'a[href], button, input:not([type=hidden]), select, textarea, summary, [tabindex]'));
const unnamed = controls.filter(el => {
  const labelled = (el.labels && el.labels.length > 0) || el.getAttribute('aria-label')
    || el.getAttribute('aria-labelledby') || (el.innerText || '').trim() !== '';
  return !labelled;
}).map(el => el.outerHTML.slice(0, 120));
const unfocusable = controls.filter(el => {
  el.focus();
  return document.activeElement !== el;
}).map(el => el.outerHTML.slice(0, 120));
document.activeElement.blur();
document.querySelectorAll('.scroll').forEach(el => { el.scrollLeft = 0; });
window.scrollTo(0, 0);
return {
  unnamed, unfocusable,
  overflow: document.documentElement.scrollWidth - window.innerWidth,
  width: window.innerWidth,
};
"#;

#[tokio::test]
async fn every_page_works_at_desktop_and_phone_width_with_every_control_labelled_and_focusable() {
    let (app, module) = TestApp::start_running("misbehave").await;
    app.client
        .name_module(&module, "misbehave:stable")
        .await
        .expect("the name is set");
    let succeeded = app
        .run(
            &module,
            json!({"mode": "succeed", "output": {"rows": 3, "ok": true}}),
        )
        .await;
    let dead = app.submit_with(fatal(&module, "bad input")).await.id;
    until_state(&app, dead, JobState::Dead).await;

    let browser = Browser::start(&app.url).await;
    let pages = [
        ("overview", "/ui".to_owned()),
        ("jobs", "/ui/jobs".to_owned()),
        ("job", format!("/ui/jobs/{}", succeeded.id)),
        ("job-dead", format!("/ui/jobs/{dead}")),
        ("dead-letters", "/ui/dead-letters".to_owned()),
        ("modules", "/ui/modules".to_owned()),
        ("queues", "/ui/queues".to_owned()),
    ];
    for width in [1280, 390] {
        browser.set_width(width).await;
        for (name, path) in &pages {
            browser.open(path).await;
            let check = browser.eval(PAGE_CHECK).await;
            assert_eq!(check["unnamed"], json!([]), "{name} at {width} px");
            assert_eq!(check["unfocusable"], json!([]), "{name} at {width} px");
            assert!(
                check["overflow"].as_i64().unwrap() <= 0,
                "{name} at {width} px overflows sideways: {check}"
            );
            browser.screenshot(&format!("{name}-{width}")).await;
        }
    }

    // What the pages say, checked once at desktop width.
    browser.set_width(1280).await;
    browser.open(&format!("/ui/jobs/{}", succeeded.id)).await;
    let page = browser.page_text().await;
    assert!(
        page.contains("\"rows\": 3"),
        "output shown as indented JSON: {page}"
    );
    assert!(page.contains("misbehave:stable"), "{page}");
    browser.open("/ui/modules").await;
    let page = browser.page_text().await;
    assert!(
        page.contains(&module) && page.contains("misbehave:stable"),
        "{page}"
    );
    browser.open("/ui").await;
    let workers = browser.text("#workers-heading + div").await;
    assert!(
        workers.contains("w1"),
        "the running worker is listed: {workers}"
    );
    let chart = browser
        .eval("return document.querySelector('figure.chart svg').getAttribute('aria-label')")
        .await;
    assert!(
        chart.as_str().unwrap().contains("2 started"),
        "the chart counts the last hour's attempts: {chart}"
    );
    browser
        .open("/ui/jobs?module=misbehave:stable&state=dead")
        .await;
    let listed = browser
        .eval("return document.querySelectorAll('tbody tr').length")
        .await;
    assert_eq!(listed, json!(1), "filtering by module name and state");
    browser
        .open(&format!("/ui/jobs?id={}", &dead.to_string()[..8]))
        .await;
    assert!(browser.page_text().await.contains(&dead.to_string()));
    browser.close().await;
    app.finish().await;
}

/// A query string a page cannot read gets the console's error page, with
/// the headers every page carries: the overview used the API's query
/// extractor, and answered with the API's JSON error and none of them.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_a_page_cannot_read_gets_an_error_page_with_the_consoles_headers() {
    let app = TestApp::start().await;
    for page in ["/ui", "/ui/jobs", "/ui/queues", "/ui/dead-letters"] {
        let response = reqwest::get(format!("{}{page}?count=x", app.url))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{page}");
        let headers = response.headers();
        assert!(
            headers[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{page}: {headers:?}"
        );
        assert!(
            headers.contains_key("content-security-policy"),
            "{page}: {headers:?}"
        );
    }
    app.finish().await;
}

/// A bulk form's `back` is followed only when it is a jobs page that can
/// be a `Location`: one holding a control character (`%0A` decoded) used
/// to pass the prefix check, act on the jobs, and then fail to redirect
/// with a 500.
#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_action_with_an_unusable_back_address_redirects_to_the_jobs_page() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    let job = app.submit(&module, json!({"name": "queued"})).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // The console is open (no tokens): its first page opens a session.
    let page = http
        .get(format!("{}/ui/jobs", app.url))
        .send()
        .await
        .unwrap();
    let cookie = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = page.text().await.unwrap();
    let csrf = html
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries a CSRF token");
    let response = http
        .post(format!("{}/ui/jobs/bulk", app.url))
        .header(COOKIE, &cookie)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!(
            "csrf={csrf}&action=cancel&id={}&confirm=yes&back=/ui/jobs%0Ax",
            job.id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let location = response.headers()[LOCATION].to_str().unwrap();
    assert!(location.starts_with("/ui/jobs?"), "{location}");
    until_state(&app, job.id, JobState::Cancelled).await;
    app.finish().await;
}
