//! Raw HTTP against a [`TestApp`]'s API, for what the typed client cannot
//! send or a test wants to see as the JSON on the wire.

use serde_json::Value;

use super::TestApp;

impl TestApp {
    /// Raw HTTP against the API, for requests the typed client cannot make.
    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    /// POSTs `body` as JSON to `path`; every answer, error or not, is JSON.
    pub async fn post_json(&self, path: &str, body: &str) -> (reqwest::StatusCode, Value) {
        self.send_json(reqwest::Method::POST, path, body).await
    }

    /// GETs `path`; every answer, error or not, is JSON.
    pub async fn get_json(&self, path: &str) -> (reqwest::StatusCode, Value) {
        json_answer(self.http().get(format!("{}{path}", self.url))).await
    }

    /// GETs `path`, for tests that look at more than the status and JSON.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http()
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("the API answers")
    }

    /// PUTs `body` as JSON to `path`.
    pub async fn put_json(&self, path: &str, body: &str) -> (reqwest::StatusCode, Value) {
        self.send_json(reqwest::Method::PUT, path, body).await
    }

    /// Sends `body` as JSON to `path` with `method`.
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &str,
    ) -> (reqwest::StatusCode, Value) {
        send_json(&self.url, method, path, body).await
    }

    /// PUTs `body` to `path`.
    pub async fn put(&self, path: &str, body: Vec<u8>) -> (reqwest::StatusCode, Value) {
        json_answer(self.http().put(format!("{}{path}", self.url)).body(body)).await
    }
}

/// Asserts that an API `answer` to `case` is the error `code` with
/// `status`, and that its message mentions `mention` (what the caller
/// must fix).
#[track_caller]
pub fn assert_api_error(
    case: &str,
    answer: &(reqwest::StatusCode, Value),
    status: reqwest::StatusCode,
    code: &str,
    mention: &str,
) {
    let (actual, body) = answer;
    assert_eq!(*actual, status, "{case} → {body}");
    assert_eq!(body["error"]["code"], code, "{case} → {body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(mention),
        "{case}: {message:?} should mention {mention:?}"
    );
}

/// Sends `request` and reads its answer's status and JSON body.
/// Sends `body` as JSON to `path` of the API at `url` with `method`; every
/// answer, error or not, is JSON.
pub async fn send_json(
    url: &str,
    method: reqwest::Method,
    path: &str,
    body: &str,
) -> (reqwest::StatusCode, Value) {
    let request = reqwest::Client::new()
        .request(method, format!("{url}{path}"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    json_answer(request).await
}

async fn json_answer(request: reqwest::RequestBuilder) -> (reqwest::StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    (
        status,
        response.json().await.expect("every response is JSON"),
    )
}
