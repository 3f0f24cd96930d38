//! Every example plugin, run by a real worker: outputs, errors, logs.

use base64::Engine as _;
use serde_json::json;
use taskflow::api::types::SubmitJob;
use taskflow::job::JobState;

use crate::support::{TestApp, assert_state, tree};

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_example_plugins_compute_what_they_promise() {
    let app = TestApp::start().await;
    app.spawn_worker("w1");
    let wordstats = app.upload("wordstats").await;
    let job = app
        .run(
            &wordstats,
            json!({"text": "a rose is a rose is a rose", "top": 2}),
        )
        .await;
    assert_eq!(
        tree(&job.output),
        Some(json!({
            "bytes": 26, "chars": 26, "lines": 1, "words": 8, "unique_words": 3,
            "top_words": [{"word": "a", "count": 3}, {"word": "rose", "count": 3}]
        }))
    );
    let attempt = &app.attempts(job.id).await[0];
    assert_eq!(attempt.logs[0]["message"], "8 words, 3 distinct");

    let digest = app.upload("digest").await;
    let payload = [0u8, 159, 146, 150];
    let job = app
        .run_with(SubmitJob {
            module: digest,
            input_base64: Some(base64::engine::general_purpose::STANDARD.encode(payload)),
            ..Default::default()
        })
        .await;
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(payload));
    assert_eq!(
        tree(&job.output),
        Some(json!({"size": 4, "sha256": sha256, "base64": "AJ+Slg=="}))
    );

    let jsonpipe = app.upload("jsonpipe").await;
    let job = app
        .run(
            &jsonpipe,
            json!({
                "records": [{"n": "a", "v": 3}, {"n": "b", "v": 1}, {"n": "c", "v": 2}],
                "where": [{"field": "v", "op": "gte", "value": 2}],
                "sort_by": "v",
                "select": ["n"]
            }),
        )
        .await;
    assert_eq!(
        tree(&job.output),
        Some(json!({"matched": 2, "records": [{"n": "c"}, {"n": "a"}]}))
    );
    let bad = app
        .run(
            &jsonpipe,
            json!({"records": [], "where": [{"field": "v", "op": "like"}]}),
        )
        .await;
    assert_eq!(bad.state, JobState::Dead, "bad input is fatal: no retries");
    assert_eq!(bad.attempt, 1);
    assert!(
        bad.last_error.unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("like")
    );

    let mandelbrot = app.upload("mandelbrot").await;
    let job = app
        .run(&mandelbrot, json!({"width": 16, "height": 8}))
        .await;
    let image = base64::engine::general_purpose::STANDARD
        .decode(job.output_base64.unwrap())
        .unwrap();
    assert!(image.starts_with(b"P6\n16 8\n255\n"));
    assert_eq!(image.len(), b"P6\n16 8\n255\n".len() + 16 * 8 * 3);
    let summary = app
        .run(
            &mandelbrot,
            json!({"width": 64, "height": 64, "format": "summary"}),
        )
        .await;
    let summary = tree(&summary.output).unwrap();
    assert_eq!(summary["width"], 64);
    assert!(summary["inside"].as_u64().unwrap() > 0);

    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_written_in_python_runs_end_to_end() {
    // Needs plugins/python-csv built by componentize-py; scripts/test leaves
    // this test out (and says so) when it could not be built.
    let app = TestApp::start().await;
    let servers = crate::support::TestServers::start().await;
    let origin = format!("http://127.0.0.1:{}", servers.http.port());
    app.set_default_queue(json!({"allowed_hosts": [origin]}))
        .await;
    app.spawn_worker("w1");
    let module = app.upload("python_csv").await;
    // A Python interpreter needs more memory than the default limit.
    let python = |input| SubmitJob {
        memory_limit_bytes: Some(256 << 20),
        ..SubmitJob::new(&module, input)
    };
    let csv = json!({"csv": "name;age\nAda;36\nAlan;41\n", "delimiter": ";"});
    // The worker first compiles a whole Python interpreter: 33 s alone on
    // the CI machine, over a minute beside the other tests.
    let id = app.submit_with(python(csv)).await.id;
    let job = app
        .client
        .wait(id, std::time::Duration::from_secs(300))
        .await
        .expect("job finishes");
    assert_state(&job, JobState::Succeeded);
    assert_eq!(
        tree(&job.output),
        Some(json!({
            "count": 2,
            "columns": ["name", "age"],
            "rows": [{"name": "Ada", "age": "36"}, {"name": "Alan", "age": "41"}]
        }))
    );
    let attempt = &app.attempts(job.id).await[0];
    let line = attempt.logs[0]["message"].as_str().unwrap();
    assert_eq!(line, format!("parsed 2 rows (job {}, attempt 1)", job.id));

    // The same task fetches its CSV over wasi:http from a granted host.
    let fetched = app
        .run_with(python(json!({"url": format!("{origin}/csv")})))
        .await;
    assert_state(&fetched, JobState::Succeeded);
    assert_eq!(tree(&fetched.output).unwrap()["rows"][0]["name"], "Ada");
    let attempt = &app.attempts(fetched.id).await[0];
    assert_eq!(attempt.requests[0]["status"], 200);

    // As the SDK's table has it (docs/sdk.md): a 503 is worth a retry and
    // a 404 is not, and neither message repeats the URL's query, which may
    // carry a token.
    for (path, attempts) in [("unavailable", 2), ("missing", 1)] {
        let url = format!("{origin}/{path}?token=t0ps3cret");
        let failed = app
            .run_with(SubmitJob {
                max_attempts: Some(2),
                ..python(json!({ "url": url }))
            })
            .await;
        assert_eq!(failed.state, JobState::Dead, "{path}");
        assert_eq!(failed.attempt, attempts, "{path}");
        let message = failed.last_error.unwrap()["message"].to_string();
        assert!(
            message.contains(path) && !message.contains("t0ps3cret"),
            "{message}"
        );
    }

    let bad = app.run_with(python(json!({"rows": []}))).await;
    assert_eq!(bad.state, JobState::Dead);
    assert_eq!(bad.attempt, 1, "the Python task's error said not to retry");
    assert!(
        bad.last_error.unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("csv")
    );
    app.finish().await;
}
