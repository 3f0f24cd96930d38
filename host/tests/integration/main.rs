//! Integration tests: real PostgreSQL, real Redis, real wasmtime, real
//! plugins. Each test gets its own database and Redis key prefix, so they
//! run in parallel. Run them with `scripts/test`.

mod support;

mod cli;
mod client;
mod compile;
mod completer;
mod console;
mod console_store;
mod deploy;
mod execution;
mod fencing;
mod fuzz;
mod hostile_clients;
mod jobs_api;
mod leases;
mod long_poll;
mod maintenance;
mod migrations;
mod module_names;
mod modules_api;
mod openapi;
mod outbound;
mod plugins;
mod pooler;
mod queue_limits;
mod queue_stats;
mod queues_api;
mod race;
mod recovery;
mod replica;
mod retention;
mod sandbox;
mod security;
mod store_connections;
mod submissions;
mod submitter;
mod traces;
mod wakeups;
