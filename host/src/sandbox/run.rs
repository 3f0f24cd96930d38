//! Running one attempt: a fresh store with its limits, the guest's call,
//! and every way it can end classified.

use std::time::Instant;

use wasmtime::{Store, UpdateDeadline};

use super::capture::LogCapture;
use super::failure::Interrupted;
use super::guest::GuestState;
use super::outbound::{AttemptOutbound, RequestLog};
use super::output::{GuestError, GuestOutput};
use super::{Attempt, Execution, HOST_CALL_GRACE, PreparedTask, Sandbox};
use crate::job::{Failure, FailureKind};

impl Sandbox {
    /// Runs one attempt in a fresh store. Never panics or fails: everything
    /// that can go wrong becomes the [`Execution`]'s failure.
    pub async fn run(&self, task: &PreparedTask, attempt: Attempt) -> Execution {
        let Attempt {
            input,
            context,
            limits,
            grant,
            mut grants,
        } = attempt;
        let config = &self.inner.config;
        if limits.memory_bytes > config.max_memory_bytes {
            return Execution::failed(Failure::new(
                FailureKind::WorkerLimitExceeded,
                format!(
                    "the job asks for {} bytes of memory and this worker grants at most {}; give \
                     the API and the workers the same TASKFLOW_MAX_MEMORY_LIMIT_BYTES",
                    limits.memory_bytes, config.max_memory_bytes
                ),
            ));
        }
        let log = LogCapture::new(config.max_log_bytes);
        let memory_bytes = limits.memory_bytes as usize;
        let started = Instant::now();
        let deadline = started + limits.timeout;
        // The configuration goes to `wasi:config`; the outbound state needs
        // only the hosts and secrets.
        let config_values = std::mem::take(&mut grants.config);
        let outbound = task.uses_grants().then(|| {
            AttemptOutbound::new(
                config.outbound.clone(),
                self.inner.tls.clone(),
                grants,
                deadline,
                grant.clone(),
            )
        });
        let mut store = Store::new(
            &self.inner.engine,
            GuestState::new(
                log.clone(),
                context,
                memory_bytes,
                outbound.clone(),
                config_values,
            ),
        );
        store.limiter(|state| &mut state.limiter);
        // wasmtime caps what one call may move from guest to host (128 MiB
        // by default) and fails the call past it, before copying. TaskFlow's
        // own checks are finer (the output's length, `output.rs`; log lines
        // and stream writes are never copied whole) and must see every
        // in-bounds list to say why it was refused, so the cap becomes the
        // guest's memory, which no list can exceed.
        store.set_hostcall_fuel(memory_bytes);
        if let Err(error) = store.set_fuel(limits.fuel) {
            return host_failure(&log, started, format!("cannot set fuel: {error:#}"));
        }
        store.set_epoch_deadline(1);
        let callback_grant = grant.clone();
        store.epoch_deadline_callback(move |_| {
            let now = Instant::now();
            if now >= deadline {
                return Err(Interrupted::Timeout.into());
            }
            if !callback_grant.is_valid_at(now) {
                return Err(Interrupted::LeaseLost.into());
            }
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });

        let call = async {
            let instance = task
                .pre
                .instance_pre()
                .instantiate_async(&mut store)
                .await?;
            let run = instance.get_typed_func::<(&[u8],), (Result<GuestOutput, GuestError>,)>(
                &mut store, "run",
            )?;
            let (result,) = run.call_async(&mut store, (&input,)).await?;
            wasmtime::Result::Ok(result)
        };
        // The grant is polled before the guest: a grant that ended before
        // the attempt started runs no guest code at all, and a worker
        // resumed after a pause past its lease, whose grant timer is due,
        // does not let a guest blocked in a host call go on. An outcome the
        // guest returns once the grant has ended (it was running wasm code
        // when the worker was paused, and finished before the next epoch
        // tick) is not its attempt's either (docs/failure-semantics.md,
        // "Worker paused past its lease").
        let outcome = tokio::select! {
            biased;
            () = grant.invalidated() => Err(Interrupted::LeaseLost.into()),
            outcome = call => outcome,
            () = tokio::time::sleep_until((deadline + HOST_CALL_GRACE).into()) => {
                Err(Interrupted::Timeout.into())
            }
        };
        let outcome = match outcome {
            Ok(_) if !grant.is_valid_at(Instant::now()) => Err(Interrupted::LeaseLost.into()),
            outcome => outcome,
        };
        let duration = started.elapsed();
        let fuel_consumed = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let memory_bytes = store.data().limiter.allocated_bytes() as u64;
        drop(store);
        let captured = log.finish();
        let requests = outbound.map_or_else(RequestLog::default, |outbound| outbound.finish());
        let too_large = |bytes: usize| {
            Failure::new(
                FailureKind::OutputTooLarge,
                format!(
                    "the task returned {bytes} bytes; the limit is {}",
                    config.max_output_bytes
                ),
            )
        };
        let result = match outcome {
            Ok(Ok(GuestOutput::Bytes(output))) if output.len() > config.max_output_bytes => {
                Err(too_large(output.len()))
            }
            Ok(Ok(GuestOutput::Bytes(output))) => Ok(output),
            Ok(Ok(GuestOutput::TooLong(bytes))) => Err(too_large(bytes)),
            Ok(Err(error)) => Err(guest_failure(error)),
            Err(error) => Err(super::failure::classify(
                &error,
                &captured,
                limits.timeout.as_millis() as u64,
                limits.fuel,
            )),
        };
        Execution {
            result,
            fuel_consumed,
            memory_bytes,
            duration,
            log: captured,
            requests,
        }
    }
}

fn host_failure(log: &LogCapture, started: Instant, message: String) -> Execution {
    Execution {
        result: Err(Failure::new(FailureKind::ModuleUnavailable, message)),
        fuel_consumed: 0,
        memory_bytes: 0,
        duration: started.elapsed(),
        log: log.finish(),
        requests: RequestLog::default(),
    }
}

fn guest_failure(error: GuestError) -> Failure {
    Failure {
        kind: FailureKind::GuestError,
        message: error.message.0,
        retryable: error.retryable,
    }
}
