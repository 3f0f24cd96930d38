//! The span of one submission request ([`Submission`]), which the API
//! opens before it writes the jobs and ends with what came of them.

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, Status};

use crate::job::TraceContext;
use crate::store::Submitted;

/// The span of a submission, open until [`Submission::end`].
pub struct Submission {
    pub(super) span: Option<opentelemetry_sdk::trace::Span>,
    pub(super) context: Option<TraceContext>,
}

impl Submission {
    /// The context to store with the submitted jobs: this span's, or the
    /// caller's when traces are off.
    pub fn context(&self) -> Option<TraceContext> {
        self.context
    }

    /// Ends the span with what came of the submission: the jobs, or the
    /// code of the error answered (never its message, which may quote the
    /// request).
    pub fn end(self, result: Result<&[Submitted], &'static str>) {
        let Some(mut span) = self.span else {
            return;
        };
        match result {
            Ok(submitted) => {
                if let [one] = submitted {
                    span.set_attributes([
                        KeyValue::new("messaging.destination.name", one.job.queue.clone()),
                        KeyValue::new("messaging.message.id", one.job.id.to_string()),
                    ]);
                }
                let created = submitted.iter().filter(|s| s.created).count();
                span.set_attribute(KeyValue::new("taskflow.created", created as i64));
            }
            Err(code) => span.set_status(Status::error(code)),
        }
        span.end();
    }
}
