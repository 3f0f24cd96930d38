//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!`
//! (store/mod.rs, `MIGRATOR`) embeds the files of `migrations/` at compile
//! time, and cargo sees a proc macro's reads only through this script.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
