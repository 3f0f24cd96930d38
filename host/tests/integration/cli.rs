//! The `taskflow` binary as a user runs it: local runs and client commands.

use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{TestApp, plugin_path, test_database};

fn taskflow(args: &[&str]) -> Output {
    taskflow_with_env::<&str>(args, &[])
}

fn taskflow_with_env<V: AsRef<std::ffi::OsStr>>(args: &[&str], env: &[(&str, V)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskflow"))
        .args(args)
        .env("RUST_LOG", "warn")
        // Whatever token the tests' environment holds is not the tests' own.
        .env_remove("TASKFLOW_API_TOKEN")
        .envs(env.iter().map(|(name, value)| (name, value)))
        .output()
        .expect("the taskflow binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that the command failed and told the user `reason` on stderr.
#[track_caller]
fn assert_refused(output: &Output, reason: &str) {
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(reason), "{stderr}");
}

#[test]
fn taskflow_run_executes_a_component_locally_under_the_worker_limits() {
    let hello = plugin_path("hello");
    let output = taskflow(&[
        "run",
        hello.to_str().unwrap(),
        "--input",
        r#"{"name":"cli"}"#,
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout).trim(), r#"{"greeting":"Hello, cli!"}"#);
    assert!(text(&output.stderr).contains("greeting cli (job local, attempt 1)"));

    let misbehave = plugin_path("misbehave");
    let output = taskflow(&[
        "run",
        misbehave.to_str().unwrap(),
        "--input",
        r#"{"mode":"spin"}"#,
        "--timeout-ms",
        "200",
        "--json",
    ]);
    assert!(!output.status.success());
    let report: Value = serde_json::from_slice(&output.stdout).expect("--json prints JSON");
    assert_eq!(report["succeeded"], false);
    assert_eq!(report["error"]["kind"], "timeout");
    assert!(text(&output.stderr).contains("the task failed [timeout, retryable]"));

    let output = taskflow(&[
        "run",
        misbehave.to_str().unwrap(),
        "--input",
        r#"{"mode":"allocate"}"#,
    ]);
    assert!(
        text(&output.stderr).contains("[memory_limit"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn taskflow_run_refuses_what_an_upload_would_refuse() {
    let dir = std::env::temp_dir().join(format!("taskflow-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let core = dir.join("core.wasm");
    std::fs::write(&core, wat::parse_str("(module)").unwrap()).unwrap();
    let output = taskflow(&["run", core.to_str().unwrap()]);
    assert_refused(&output, "core WebAssembly module");

    let hello = plugin_path("hello");
    let output = taskflow(&[
        "run",
        hello.to_str().unwrap(),
        "--input",
        "{}",
        "--fuel",
        "0",
    ]);
    assert_refused(&output, "fuel: must be between");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `--threads` sizes `taskflow api`'s runtime; `taskflow dev` runs on one
/// runtime with its workers, and used to accept the flag and ignore it.
#[test]
fn taskflow_dev_refuses_the_apis_thread_count_it_cannot_honour() {
    // Refused before it connects anywhere: no server answers here.
    let nowhere = [
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"),
        ("REDIS_URL", "redis://127.0.0.1:1"),
    ];
    let output = taskflow_with_env(&["dev", "--threads", "4", "--exit-after-demo"], &nowhere);
    assert_refused(&output, "--threads");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_commands_push_submit_wait_and_inspect() {
    let app = TestApp::start().await;
    app.spawn_worker("w1");
    let url = app.url.clone();
    let hello = plugin_path("hello");
    let run = move |args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut all = args;
            all.extend(["--api".to_owned(), url]);
            taskflow(&all.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };

    let pushed = run(vec![
        "module".into(),
        "push".into(),
        hello.display().to_string(),
        "--json".into(),
    ])
    .await
    .unwrap();
    assert!(pushed.status.success(), "{}", text(&pushed.stderr));
    let module: Value = serde_json::from_slice(&pushed.stdout).unwrap();
    let hash = module["hash"].as_str().unwrap().to_owned();

    let submitted = run(vec![
        "job".into(),
        "submit".into(),
        "--module".into(),
        hash.clone(),
        "--input".into(),
        r#"{"name":"shell"}"#.into(),
        "--wait".into(),
        "--json".into(),
    ])
    .await
    .unwrap();
    assert!(submitted.status.success(), "{}", text(&submitted.stderr));
    let job: Value = serde_json::from_slice(&submitted.stdout).unwrap();
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["output"]["greeting"], "Hello, shell!");
    let id = job["id"].as_str().unwrap().to_owned();

    // Submitted without waiting, then waited on by `job get --wait`.
    let queued = run(vec![
        "job".into(),
        "submit".into(),
        "--module".into(),
        hash.clone(),
        "--input".into(),
        r#"{"name":"later"}"#.into(),
        "--json".into(),
    ])
    .await
    .unwrap();
    let queued: Value = serde_json::from_slice(&queued.stdout).unwrap();
    let waited = run(vec![
        "job".into(),
        "get".into(),
        queued["id"].as_str().unwrap().into(),
        "--wait".into(),
        "30s".into(),
        "--json".into(),
    ])
    .await
    .unwrap();
    assert!(waited.status.success(), "{}", text(&waited.stderr));
    let waited: Value = serde_json::from_slice(&waited.stdout).unwrap();
    assert_eq!(waited["output"]["greeting"], "Hello, later!", "{waited}");

    // A job that ends anywhere but `succeeded` fails the command, as
    // `taskflow run` does, so a script can tell; the job is still printed.
    let misbehave = run(vec![
        "module".into(),
        "push".into(),
        plugin_path("misbehave").display().to_string(),
        "--json".into(),
    ])
    .await
    .unwrap();
    let misbehave: Value = serde_json::from_slice(&misbehave.stdout).unwrap();
    let failed = run(vec![
        "job".into(),
        "submit".into(),
        "--module".into(),
        misbehave["hash"].as_str().unwrap().into(),
        "--input".into(),
        r#"{"mode":"fatal_error","message":"no"}"#.into(),
        "--wait".into(),
        "--json".into(),
    ])
    .await
    .unwrap();
    assert_refused(&failed, "ended dead");
    let dead: Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(dead["state"], "dead");

    let attempts = run(vec!["job".into(), "attempts".into(), id.clone()])
        .await
        .unwrap();
    let attempts = text(&attempts.stdout);
    assert!(attempts.contains("#1 succeeded on w1"), "{attempts}");
    assert!(attempts.contains(" KiB memory)"), "peak memory: {attempts}");
    assert!(attempts.contains("greeting shell"), "{attempts}");

    let listed = run(vec![
        "job".into(),
        "list".into(),
        "--state".into(),
        "succeeded".into(),
    ])
    .await
    .unwrap();
    assert!(text(&listed.stdout).contains(&id));

    // A name is one path segment, whatever it holds: `..` and `/` must
    // not point the request at another resource (here, the job).
    let retargeted = run(vec!["module".into(), "rm".into(), format!("../jobs/{id}")])
        .await
        .unwrap();
    assert!(!retargeted.status.success(), "{}", text(&retargeted.stdout));
    let kept = app.client.get_job(id.parse().unwrap()).await.unwrap();
    assert_eq!(kept.id.to_string(), id, "the job is still there");

    let removed = run(vec!["job".into(), "rm".into(), id.clone()])
        .await
        .unwrap();
    assert!(
        text(&removed.stdout).contains(&format!("job {id} (succeeded) is deleted")),
        "{}",
        text(&removed.stderr)
    );
    for gone in [
        vec!["job".into(), "get".into(), id.clone()],
        vec!["job".into(), "get".into(), uuid::Uuid::now_v7().to_string()],
    ] {
        let missing = run(gone).await.unwrap();
        assert_refused(&missing, "does not exist");
    }
    app.finish().await;
}

/// A client's token authenticates from `TASKFLOW_API_TOKEN` or `--token`;
/// the flag warns, since its value shows in `ps` to every user of the
/// machine (and in `/proc/<pid>/cmdline`), and the variable does not.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_on_the_command_line_works_and_warns_that_ps_shows_it() {
    let (token, hash) = taskflow::api::auth::create_token();
    let app = TestApp::start_with(crate::support::TestOptions {
        api_token_sha256: vec![hash],
        ..Default::default()
    })
    .await;
    let list = |flag: Option<String>, env: Vec<(&'static str, String)>| {
        let mut args = vec![
            "module".to_owned(),
            "list".to_owned(),
            "--api".to_owned(),
            app.url.clone(),
        ];
        args.extend(
            flag.map(|token| ["--token".to_owned(), token])
                .into_iter()
                .flatten(),
        );
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            taskflow_with_env(&args, &env)
        })
    };
    let warning = "set TASKFLOW_API_TOKEN instead";

    let flagged = list(Some(token.clone()), vec![]).await.unwrap();
    assert!(flagged.status.success(), "{}", text(&flagged.stderr));
    assert!(
        text(&flagged.stderr).contains(warning),
        "{}",
        text(&flagged.stderr)
    );
    assert!(
        !text(&flagged.stderr).contains(&token),
        "the warning names no token"
    );

    let from_env = list(None, vec![("TASKFLOW_API_TOKEN", token.clone())])
        .await
        .unwrap();
    assert!(from_env.status.success(), "{}", text(&from_env.stderr));
    assert!(
        !text(&from_env.stderr).contains(warning),
        "{}",
        text(&from_env.stderr)
    );

    let without = list(None, vec![]).await.unwrap();
    assert_refused(&without, "unauthorized");

    // A variable that is not UTF-8 cannot hold a token: said so, rather
    // than sent as no token and answered with a 401.
    let url = app.url.clone();
    let garbled = tokio::task::spawn_blocking(move || {
        use std::os::unix::ffi::OsStrExt as _;
        let token = std::ffi::OsStr::from_bytes(b"tf_\xff");
        taskflow_with_env(
            &["module", "list", "--api", &url],
            &[("TASKFLOW_API_TOKEN", token)],
        )
    })
    .await
    .unwrap();
    assert_refused(&garbled, "TASKFLOW_API_TOKEN is not UTF-8");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_queue_commands_grant_hosts_config_and_a_secret_read_from_the_environment() {
    const SECRET: &str = "cli-secret-never-printed";
    let app = TestApp::start().await;
    let url = app.url.clone();
    let queue = move |args: &[&str]| {
        let mut all: Vec<String> = ["queue"]
            .iter()
            .chain(args)
            .map(|&a| a.to_owned())
            .collect();
        all.extend(["--api".to_owned(), url.clone()]);
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            taskflow_with_env(&args, &[("TASKFLOW_SECRET_HOOK_KEY", SECRET)])
        })
    };
    let set = queue(&[
        "set",
        "webhooks",
        "--allow-host",
        "https://hooks.example.com",
        "--config",
        "region=eu",
        "--secret",
        "hook-key=https://hooks.example.com",
        "--json",
    ])
    .await
    .unwrap();
    assert!(set.status.success(), "{}", text(&set.stderr));
    let view: Value = serde_json::from_slice(&set.stdout).unwrap();
    assert_eq!(view["allowed_hosts"][0], "https://hooks.example.com");
    assert_eq!(view["config"]["region"], "eu");
    assert_eq!(
        view["secrets"]["hook-key"]["allowed_hosts"][0],
        "https://hooks.example.com"
    );
    let grants = app.store().queue_grants("webhooks").await.unwrap();
    let key = app.backends.secret_key.as_ref().unwrap();
    let opened = key.open("webhooks", "hook-key", &grants.sealed_secrets["hook-key"]);
    assert_eq!(opened.unwrap().expose(), SECRET);

    let got = queue(&["get", "webhooks"]).await.unwrap();
    let shown = text(&got.stdout);
    assert!(
        shown.contains("allow  https://hooks.example.com"),
        "{shown}"
    );
    assert!(
        shown.contains("secret hook-key -> https://hooks.example.com"),
        "{shown}"
    );
    let listed = queue(&["list"]).await.unwrap();
    let table = text(&listed.stdout);
    assert!(
        table.lines().any(|line| line.starts_with("webhooks ")),
        "{table}"
    );
    for output in [&set, &got, &listed] {
        assert!(!text(&output.stdout).contains(SECRET) && !text(&output.stderr).contains(SECRET));
    }
    let refused = queue(&["set", "webhooks", "--allow-host", "ftp://x"])
        .await
        .unwrap();
    assert_refused(&refused, "allowed_hosts[0]");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_limits_pauses_and_resumes_a_queue_and_names_and_removes_modules() {
    let (app, hello) = TestApp::start_with_plugin("hello").await;
    let noop = app.upload("noop").await;
    let url = app.url.clone();
    let cli = move |args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
            all.extend(["--api", &url]);
            taskflow(&all)
        })
    };
    let args = |text: &str| text.split(' ').map(str::to_owned).collect::<Vec<_>>();
    let ok = |output: Output| {
        assert!(output.status.success(), "{}", text(&output.stderr));
        text(&output.stdout)
    };

    let limited = ok(cli(args(
        "queue limit emails --max-running 3 --rate 20/1s --retain-succeeded 1d",
    ))
    .await
    .unwrap());
    assert!(limited.contains("at most 3 running"), "{limited}");
    assert!(limited.contains("at most 20 starts per 1s"), "{limited}");
    assert!(limited.contains("keep   succeeded jobs 1day"), "{limited}");
    let lifted = ok(cli(args("queue limit emails --max-running none --json"))
        .await
        .unwrap());
    let view: Value = serde_json::from_str(&lifted).unwrap();
    assert_eq!(view["max_running"], Value::Null);
    assert_eq!(view["rate"]["limit"], 20, "the other limits stay");
    assert!(ok(cli(args("queue pause emails")).await.unwrap()).contains("paused"));
    let resumed = ok(cli(args("queue resume emails --json")).await.unwrap());
    assert_eq!(
        serde_json::from_str::<Value>(&resumed).unwrap()["paused"],
        false
    );
    assert_refused(
        &cli(args("queue limit emails --rate 5/10ms")).await.unwrap(),
        "rate.period",
    );

    ok(cli(args(&format!("module name {hello} greeter:stable")))
        .await
        .unwrap());
    let moved = ok(cli(args(&format!("module name {noop} greeter:stable")))
        .await
        .unwrap());
    assert!(moved.contains(&format!("(was {hello})")), "{moved}");
    let rolled = ok(cli(args("module rollback greeter:stable")).await.unwrap());
    assert!(
        rolled.contains(&format!("greeter:stable -> {hello}")),
        "{rolled}"
    );
    let history = ok(cli(args("module names greeter:stable")).await.unwrap());
    assert_eq!(
        history.lines().count(),
        4,
        "the name and its 3 moves: {history}"
    );
    ok(cli(args(&format!("module name {hello} greeter:next")))
        .await
        .unwrap());
    let first = ok(cli(args("module names --limit 1")).await.unwrap());
    assert_eq!(
        first,
        format!("greeter:next  {hello}\nmore: --cursor greeter:next\n")
    );
    let rest = ok(cli(args("module names --limit 1 --cursor greeter:next"))
        .await
        .unwrap());
    assert!(rest.starts_with("greeter:stable "), "{rest}");
    assert_refused(
        &cli(args("module names greeter:stable --limit 1"))
            .await
            .unwrap(),
        "cannot be used with",
    );
    let submitted = ok(cli(args(
        "job submit --module greeter:stable --queue emails --input {} --json",
    ))
    .await
    .unwrap());
    let job: Value = serde_json::from_str(&submitted).unwrap();
    assert_eq!(job["module"], hello.as_str());
    let table = ok(cli(args("queue list")).await.unwrap());
    let row = table.lines().find(|line| line.starts_with("emails "));
    let waiting = row.and_then(|row| row.split_whitespace().nth(1));
    assert_eq!(waiting, Some("1"), "{table}");
    assert_refused(
        &cli(args(&format!("module rm {hello}"))).await.unwrap(),
        "module_in_use",
    );
    assert!(ok(cli(args(&format!("module rm {noop}"))).await.unwrap()).contains("deleted"));
    app.finish().await;
}

/// `taskflow dev` with its demo components given runs its whole demo from
/// them: no cargo, no source tree (`CARGO=/bin/false` fails any build).
#[tokio::test(flavor = "multi_thread")]
async fn taskflow_dev_runs_its_demo_from_given_components_without_building() {
    let db = test_database().await;
    let (url, prefix) = (
        db.url().to_owned(),
        format!("tftest:{}:", uuid::Uuid::new_v4().simple()),
    );
    let (hello, fetch) = (plugin_path("hello"), plugin_path("fetch"));
    let output = tokio::task::spawn_blocking(move || {
        taskflow_with_env(
            &[
                "dev",
                "--plugin",
                hello.to_str().unwrap(),
                "--fetch-plugin",
                fetch.to_str().unwrap(),
                "--exit-after-demo",
            ],
            &[
                ("DATABASE_URL", url.as_str()),
                ("TASKFLOW_REDIS_PREFIX", prefix.as_str()),
                ("TASKFLOW_LISTEN", "127.0.0.1:0"),
                ("CARGO", "/bin/false"),
            ],
        )
    })
    .await
    .unwrap();
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(stdout.contains("Hello, TaskFlow!"), "{stdout}");
    assert!(!stdout.contains("building"), "{stdout}");
    db.drop_database().await.unwrap();
}
