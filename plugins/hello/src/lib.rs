//! The README's demo task: greets whoever the input names.
//!
//! Input `{"name": "Ada"}` (name optional) → output `{"greeting": "Hello, Ada!"}`.

use serde::{Deserialize, Serialize};
use taskflow_sdk::{TaskError, task};

#[derive(Deserialize)]
struct Greet {
    #[serde(default = "world")]
    name: String,
}

fn world() -> String {
    "world".to_owned()
}

#[derive(Debug, PartialEq, Serialize)]
struct Greeting {
    greeting: String,
}

#[task]
fn hello(request: Greet) -> Result<Greeting, TaskError> {
    let context = taskflow_sdk::context();
    taskflow_sdk::log::info!(
        "greeting {} (job {}, attempt {})",
        request.name,
        context.job_id,
        context.attempt
    );
    Ok(Greeting {
        greeting: format!("Hello, {}!", request.name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_by_name_or_the_world() {
        let named = hello(Greet { name: "Ada".into() }).unwrap();
        assert_eq!(named.greeting, "Hello, Ada!");
        let anonymous: Greet = serde_json::from_str("{}").unwrap();
        assert_eq!(hello(anonymous).unwrap().greeting, "Hello, world!");
    }
}
