//! The API client (`taskflow::client`, behind every CLI command) against a
//! server that misbehaves: what it reads and shows stays bounded, and it
//! never loops without end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use taskflow::client::{Client, ClientError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// A server on loopback that answers every request with `status`,
/// `content_type` and `body`, then closes the connection; and how many
/// requests it answered.
async fn answering(
    status: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
) -> (Client, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let body = Arc::new(body);
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            let body = body.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if connection.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                counted.fetch_add(1, Ordering::Relaxed);
                let header = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = connection.write_all(header.as_bytes()).await;
                let _ = connection.write_all(&body).await;
            });
        }
    });
    (Client::new(&format!("http://{address}")), requests)
}

/// A proxy's 502 page, or a hostile server: the error names the status and
/// quotes a little of the body, not 64 MiB of it on the user's terminal.
#[tokio::test(flavor = "multi_thread")]
async fn an_error_body_is_read_and_quoted_only_in_part() {
    let (client, _) = answering("502 Bad Gateway", "text/html", vec![b'A'; 64 << 20]).await;
    let error = tokio::time::timeout(Duration::from_secs(30), client.get_job(Uuid::nil()))
        .await
        .expect("answered")
        .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("502"), "{}", &text[..text.len().min(200)]);
    assert!(text.len() < 4096, "an error of {} bytes", text.len());
}

/// A server whose pages of attempts never end (the same cursor again and
/// again) gets an error, not a client looping and growing for ever.
#[tokio::test(flavor = "multi_thread")]
async fn attempt_pages_that_never_end_are_refused() {
    let page = format!(
        r#"{{"job_id":"{}","attempts":[],"next_cursor":"again"}}"#,
        Uuid::nil()
    );
    let (client, _) = answering("200 OK", "application/json", page.into_bytes()).await;
    let listed = tokio::time::timeout(Duration::from_secs(10), client.attempts(Uuid::nil()))
        .await
        .expect("the client gave up on its own");
    assert!(
        matches!(listed, Err(ClientError::Unexpected(_))),
        "{listed:?}"
    );
}

/// A server that does not long-poll (an older API, or a proxy that drops
/// `?wait=`) answers a waiting read at once with the job still running:
/// the client must not ask again back to back for the whole wait.
#[tokio::test(flavor = "multi_thread")]
async fn a_wait_answered_early_does_not_poll_back_to_back() {
    let app = crate::support::TestApp::start().await;
    let module = app.upload("hello").await;
    let queued = app.submit(&module, serde_json::json!({})).await;
    let job = app.client.get_job(queued.id).await.unwrap();
    let (client, requests) = answering(
        "200 OK",
        "application/json",
        serde_json::to_vec(&job).unwrap(),
    )
    .await;

    let waited = client
        .get_job_when_ended(job.id, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(!waited.state.is_final());
    let requests = requests.load(Ordering::Relaxed);
    assert!(requests <= 12, "{requests} requests in a 2 s wait");
    app.finish().await;
}
