//! Module names: submit by `name:tag`, move and roll back the name, and
//! delete a module only when nothing uses it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::{Method, StatusCode};
use serde_json::json;
use taskflow::api::types::SubmitJob;
use taskflow::job::{JobState, MAX_NAMES_PER_MODULE};
use taskflow::store::{ModuleDeletion, StoreError};

use crate::support::{TestApp, assert_api_error, assert_state, stored_module, test_database, tree};

const NAME: &str = "task:stable";

#[tokio::test(flavor = "multi_thread")]
async fn a_job_runs_the_hash_its_name_had_at_submit_through_retries_and_rollbacks_are_one_call() {
    let (app, misbehave) = TestApp::start_running("misbehave").await;
    let hello = app.upload("hello").await;
    let (status, moved) = app
        .put_json(&format!("/v1/modules/{misbehave}/names/{NAME}"), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(moved["previous"], serde_json::Value::Null);
    assert_eq!(moved["moved_by"], "anonymous");

    // Submitted by name, then the name moves before the job's first attempt:
    // both attempts still run the module the name had at submission.
    let by_name = SubmitJob {
        idempotency_key: Some("by-name".into()),
        ..SubmitJob::new(NAME, json!({"mode": "fail_until", "succeed_on": 2}))
    };
    let job = app.client.submit(&by_name).await.unwrap().job;
    assert_eq!(job.module, misbehave);
    app.put_json(&format!("/v1/modules/{hello}/names/{NAME}"), "")
        .await;
    let done = app.wait_final(job.id).await;
    assert_state(&done, JobState::Succeeded);
    assert_eq!(done.attempt, 2);
    assert_eq!(tree(&done.output), Some(json!({"attempt": 2})));

    // A retried submission finds its job although the name moved since.
    let again = app.client.submit(&by_name).await.unwrap();
    assert_eq!((again.job.id, again.created), (job.id, false));

    let now_hello = app.run(NAME, json!({"name": "named"})).await;
    assert_eq!(now_hello.module, hello);
    assert_state(&now_hello, JobState::Succeeded);

    let (status, rolled) = app
        .post_json(&format!("/v1/module-names/{NAME}/rollback"), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{rolled}");
    assert_eq!(
        (&rolled["module"], &rolled["previous"]),
        (&json!(misbehave), &json!(hello))
    );
    let (_, name) = app.get_json(&format!("/v1/module-names/{NAME}")).await;
    assert_eq!(name["module"], misbehave);
    let moves: Vec<(&str, Option<&str>)> = name["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["module"].as_str().unwrap(), m["previous"].as_str()))
        .collect();
    assert_eq!(
        moves,
        [
            (misbehave.as_str(), Some(hello.as_str())),
            (hello.as_str(), Some(misbehave.as_str())),
            (misbehave.as_str(), None),
        ]
    );
    let (_, module) = app.get_json(&format!("/v1/modules/{misbehave}")).await;
    assert_eq!(module["names"], json!([NAME]));
    let (_, all) = app.get_json("/v1/module-names").await;
    assert_eq!(all["names"], json!({NAME: misbehave}));
    app.finish().await;
}

/// What lists names reads a bounded number of rows: `GET /v1/module-names`
/// comes a page at a time, and a module takes at most
/// `MAX_NAMES_PER_MODULE` names, so the names of one module (its view, the
/// console's pages) are a bounded read too.
#[tokio::test(flavor = "multi_thread")]
async fn names_come_a_page_at_a_time_and_a_module_takes_a_bounded_number() {
    let (app, hello) = TestApp::start_with_plugin("hello").await;
    let spare = app.upload("noop").await;
    let name_at = |hash: &str, name: &str| format!("/v1/modules/{hash}/names/{name}");
    for i in 0..MAX_NAMES_PER_MODULE {
        let (status, moved) = app
            .put_json(&name_at(&hello, &format!("n-{i:03}")), "")
            .await;
        assert_eq!(status, StatusCode::OK, "{moved}");
    }
    let too_many = |case: &str, answer| {
        assert_api_error(
            case,
            &answer,
            StatusCode::CONFLICT,
            "too_many_names",
            &MAX_NAMES_PER_MODULE.to_string(),
        )
    };
    too_many(
        "one name more",
        app.send_json(Method::PUT, &name_at(&hello, "one-more"), "")
            .await,
    );
    // A name that points at it already may be pointed at it again.
    let (status, _) = app.put_json(&name_at(&hello, "n-000"), "").await;
    assert_eq!(status, StatusCode::OK);
    // A rollback that would give it one name more is refused too.
    app.put_json(&name_at(&spare, "n-000"), "").await;
    app.put_json(&name_at(&hello, "one-more"), "").await;
    too_many(
        "rolled back onto it",
        app.post_json("/v1/module-names/n-000/rollback", "").await,
    );
    let (_, module) = app.get_json(&format!("/v1/modules/{hello}")).await;
    assert_eq!(
        module["names"].as_array().unwrap().len(),
        MAX_NAMES_PER_MODULE
    );

    let mut listed: Vec<String> = Vec::new();
    let mut path = "/v1/module-names?limit=40".to_owned();
    loop {
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let names = page["names"].as_object().unwrap();
        assert!(names.len() <= 40, "{page}");
        listed.extend(names.keys().cloned());
        let Some(cursor) = page["next_cursor"].as_str() else {
            break;
        };
        path = format!("/v1/module-names?limit=40&cursor={cursor}");
    }
    let mut every: Vec<String> = (0..MAX_NAMES_PER_MODULE)
        .map(|i| format!("n-{i:03}"))
        .chain(["one-more".to_owned()])
        .collect();
    every.sort();
    assert_eq!(listed, every);
    let (_, first) = app.get_json("/v1/module-names").await;
    assert_eq!(first["names"].as_object().unwrap().len(), 50, "{first}");
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("cursor=..", "cursor"),
        ("cursor=Upper", "cursor"),
    ] {
        let (status, answer) = app.get_json(&format!("/v1/module-names?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{query}: {answer}");
    }
    app.finish().await;
}

/// A move onto a module counts the module's names under its row lock, in
/// a statement after the lock's: counted in the statement that took the
/// lock, they were read from a snapshot older than the wait, so a move
/// that waited for another's missed the name it made, and two moves onto a
/// module of 99 names left it 101.
#[tokio::test(flavor = "multi_thread")]
async fn a_move_that_waited_for_another_counts_the_name_the_other_made() {
    let db = test_database().await;
    let store = db.store();
    let module = stored_module(store).await;
    for i in 0..MAX_NAMES_PER_MODULE - 1 {
        store
            .move_module_name(&format!("n-{i:03}"), &module, "test")
            .await
            .unwrap();
    }
    // Another move onto the module, holding its lock: the 100th name.
    let mut other = db
        .begin_held(&format!(
            "SELECT 1 FROM modules WHERE hash = '{module}' FOR NO KEY UPDATE;
             INSERT INTO module_names (name, module_hash) VALUES ('other', '{module}')"
        ))
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let (store, module) = (store.clone(), module.clone());
        async move { store.move_module_name("waiting", &module, "test").await }
    });
    other.until_waiting(1).await.unwrap();
    other.commit().await.unwrap();
    let moved = waiting.await.unwrap();
    assert!(
        matches!(moved, Err(StoreError::TooManyNames { .. })),
        "{moved:?}"
    );
    assert_eq!(
        store.names_of_module(&module).await.unwrap().len(),
        MAX_NAMES_PER_MODULE
    );
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_in_use_is_not_deleted_and_one_unused_is() {
    let (app, hello) = TestApp::start_with_plugin("hello").await;
    let spare = app.upload("noop").await;
    let waiting = app.submit(&hello, json!({"name": "queued"})).await;
    let answer = app
        .send_json(Method::DELETE, &format!("/v1/modules/{hello}"), "")
        .await;
    assert_api_error(
        "referenced by an unfinished job",
        &answer,
        StatusCode::CONFLICT,
        "module_in_use",
        &waiting.id.to_string(),
    );
    app.client.cancel(waiting.id).await.unwrap();
    app.put_json(&format!("/v1/modules/{spare}/names/spare"), "")
        .await;
    assert_api_error(
        "named",
        &app.send_json(Method::DELETE, &format!("/v1/modules/{spare}"), "")
            .await,
        StatusCode::CONFLICT,
        "module_in_use",
        "names point at it: spare",
    );
    let (status, deleted) = app
        .send_json(Method::DELETE, &format!("/v1/modules/{hello}"), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    let (status, _) = app.get_json(&format!("/v1/modules/{hello}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .send_json(Method::DELETE, &format!("/v1/modules/{hello}"), "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The cancelled job cannot come back to run a module that is gone.
    assert_api_error(
        "retried after its module was deleted",
        &app.send_json(Method::POST, &format!("/v1/jobs/{}/retry", waiting.id), "")
            .await,
        StatusCode::CONFLICT,
        "module_deleted",
        &hello,
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_names_and_unknown_modules_get_a_4xx_naming_the_field() {
    let (app, hello) = TestApp::start_with_plugin("hello").await;
    let unknown = "0".repeat(64);
    for (case, answer, status, code, mention) in [
        (
            "a name outside the grammar",
            app.put_json(&format!("/v1/modules/{hello}/names/Resize"), "")
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "resize:stable",
        ),
        (
            "a tag without a name",
            app.put_json(&format!("/v1/modules/{hello}/names/:stable"), "")
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "resize:stable",
        ),
        (
            "a module never uploaded",
            app.put_json(&format!("/v1/modules/{unknown}/names/ghost"), "")
                .await,
            StatusCode::NOT_FOUND,
            "module_not_found",
            &unknown,
        ),
        (
            "a submission naming a name nobody set",
            app.post_json("/v1/jobs", r#"{"module": "nobody:home", "input": 1}"#)
                .await,
            StatusCode::NOT_FOUND,
            "module_not_found",
            "no module is named nobody:home",
        ),
        (
            "a submission naming neither hash nor name",
            app.post_json("/v1/jobs", r#"{"module": "Not A Name", "input": 1}"#)
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_hash",
            "module name",
        ),
        (
            "a rollback of a name never moved back",
            {
                app.put_json(&format!("/v1/modules/{hello}/names/once"), "")
                    .await;
                app.post_json("/v1/module-names/once/rollback", "").await
            },
            StatusCode::CONFLICT,
            "no_previous_module",
            "pointed nowhere",
        ),
        (
            "a name nobody set",
            app.get_json("/v1/module-names/nobody").await,
            StatusCode::NOT_FOUND,
            "module_name_not_found",
            "nobody",
        ),
    ] {
        assert_api_error(case, &answer, status, code, mention);
    }
    let (_, batch) = app
        .post_json(
            "/v1/jobs/batch",
            &json!({"jobs": [{"module": hello, "input": 1}, {"module": "nobody:home", "input": 1}]})
                .to_string(),
        )
        .await;
    assert_eq!(batch["error"]["field"], "jobs[1].module", "{batch}");
    assert_eq!(app.job_count().await, 0, "no job of the batch was created");
    app.finish().await;
}

/// Two first moves of a new name, racing: the second records the first's
/// module as where the name pointed before, so the history agrees with the
/// name and a rollback goes back to the first's module. The held
/// transaction stops the first move at its module's foreign-key check,
/// after it read that the name pointed nowhere, until the second has
/// started too.
#[tokio::test(flavor = "multi_thread")]
async fn racing_first_moves_of_a_name_record_one_after_the_other() {
    let db = test_database().await;
    let store = db.store().clone();
    let (first, second) = ("1".repeat(64), "2".repeat(64));
    for module in [&first, &second] {
        store.insert_module(module, b"\0asm").await.unwrap();
    }
    let mut held = db
        .begin_held(&format!(
            "SELECT 1 FROM modules WHERE hash = '{first}' FOR UPDATE"
        ))
        .await
        .unwrap();
    let move_to = |module: String| {
        let store = store.clone();
        tokio::spawn(async move { store.move_module_name("x", &module, "test").await })
    };
    let first_move = move_to(first.clone());
    held.until_waiting(1).await.unwrap();
    let second_move = move_to(second.clone());
    held.until_waiting(2).await.unwrap();
    held.release().await.unwrap();
    first_move.await.unwrap().unwrap();
    let second_moved = second_move.await.unwrap().unwrap();

    assert_eq!(second_moved.from_hash.as_deref(), Some(first.as_str()));
    let moves = store.module_name_moves("x", 10).await.unwrap();
    let history: Vec<_> = moves
        .iter()
        .map(|moved| (moved.from_hash.clone(), moved.to_hash.clone()))
        .collect();
    assert_eq!(
        history,
        [(Some(first.clone()), second.clone()), (None, first.clone())],
        "newest first"
    );
    db.drop_database().await.unwrap();
}

/// Uploads of a module that is being deleted again and again each answer
/// with the module: stored anew, or found stored, never an error.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_racing_deletes_of_their_module_always_answer_with_it() {
    const UPLOADS: usize = 400;
    let db = test_database().await;
    let store = db.store().clone();
    let hash = "d".repeat(64);
    let uploading = Arc::new(AtomicBool::new(true));
    let deleter = tokio::spawn({
        let (store, hash, uploading) = (store.clone(), hash.clone(), uploading.clone());
        async move {
            let mut deleted = 0;
            while uploading.load(Ordering::Relaxed) {
                if store.delete_module_if_unused(&hash).await.unwrap() == ModuleDeletion::Deleted {
                    deleted += 1;
                }
            }
            deleted
        }
    });
    for _ in 0..UPLOADS {
        let stored = store.insert_module(&hash, b"\0asm").await.unwrap();
        assert_eq!(stored.hash, hash);
    }
    uploading.store(false, Ordering::Relaxed);
    let deleted = deleter.await.unwrap();
    assert!(deleted > 0, "the deletes raced the uploads");
    db.drop_database().await.unwrap();
}

/// A rollback undoes the move that is the name's latest when the rollback
/// holds the name, not the one it saw on its way there: here the name went
/// A→B, and B→C→B while the rollback waited, so it goes back to C.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_undoes_the_latest_move_however_many_came_while_it_waited() {
    let app = TestApp::start().await;
    let [a, b, c] = ["a", "b", "c"].map(|digit| digit.repeat(64));
    for module in [&a, &b, &c] {
        app.store().insert_module(module, b"\0asm").await.unwrap();
    }
    for module in [&a, &b] {
        app.store()
            .move_module_name("x", module, "test")
            .await
            .unwrap();
    }
    let mut other_mover = app
        .db
        .begin_held("SELECT pg_advisory_xact_lock(hashtextextended('module_name:x', 0))")
        .await
        .unwrap();
    let rollback = tokio::spawn({
        let (http, url) = (
            app.http(),
            format!("{}/v1/module-names/x/rollback", app.url),
        );
        async move {
            let answer = http.post(url).send().await.unwrap();
            (
                answer.status(),
                answer.json::<serde_json::Value>().await.unwrap(),
            )
        }
    });
    other_mover.until_waiting(1).await.unwrap();
    other_mover
        .execute(&format!(
            "UPDATE module_names SET module_hash = '{b}' WHERE name = 'x';
             INSERT INTO module_name_moves (name, from_hash, to_hash, moved_by)
             VALUES ('x', '{b}', '{c}', 'other'), ('x', '{c}', '{b}', 'other')"
        ))
        .await
        .unwrap();
    other_mover.commit().await.unwrap();

    let (status, rolled) = rollback.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{rolled}");
    assert_eq!(
        (&rolled["module"], &rolled["previous"]),
        (&json!(c), &json!(b))
    );
    app.finish().await;
}
