//! The README's demo task: greets whoever the input names.
//!
//! Input: `{"name": "Ada"}` (name optional). Output: `{"greeting": "Hello, Ada!"}`.

use serde::{Deserialize, Serialize};
use taskflow_sdk::{Guest, Level, TaskError};

#[derive(Deserialize)]
struct Request {
    #[serde(default = "world")]
    name: String,
}

fn world() -> String {
    "world".to_owned()
}

#[derive(Serialize)]
struct Response {
    greeting: String,
}

struct Hello;

impl Guest for Hello {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, TaskError> {
        let request: Request = serde_json::from_slice(&input).map_err(|error| {
            TaskError::fatal(format!("input must be {{\"name\": string}}: {error}"))
        })?;
        let context = taskflow_sdk::context();
        taskflow_sdk::log(
            Level::Info,
            &format!(
                "greeting {} (job {}, attempt {})",
                request.name, context.job_id, context.attempt
            ),
        );
        let response = Response {
            greeting: format!("Hello, {}!", request.name),
        };
        Ok(serde_json::to_vec(&response).expect("a greeting serializes"))
    }
}

taskflow_sdk::export_task!(Hello);
