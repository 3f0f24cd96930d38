//! The bodies of the module routes (`/v1/modules` and `/v1/module-names`,
//! api/modules.rs):
//! modules, their names and the history of each name.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{ModuleRecord, NameMove};

/// A module as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModuleView {
    /// SHA-256 of the component, hex; jobs name the module by it.
    pub hash: String,
    /// Size in bytes.
    pub size_bytes: i64,
    /// First upload.
    pub created_at: DateTime<Utc>,
    /// The names pointing at it (on `GET /v1/modules/{hash}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
}

impl From<ModuleRecord> for ModuleView {
    fn from(record: ModuleRecord) -> Self {
        Self {
            hash: record.hash,
            size_bytes: record.size_bytes,
            created_at: record.created_at,
            names: None,
        }
    }
}

/// One move of a module name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NameMoveView {
    /// The name.
    pub name: String,
    /// The module it points at since this move.
    pub module: String,
    /// The module it pointed at before (absent: the name was new).
    pub previous: Option<String>,
    /// Who moved it: `token:` and the first 12 hex digits of the SHA-256
    /// of the caller's token, or `anonymous`.
    pub moved_by: String,
    /// When.
    pub moved_at: DateTime<Utc>,
}

impl From<NameMove> for NameMoveView {
    /// Field by field, so a field added to [`NameMove`] does not compile
    /// until the view decides what to show.
    fn from(moved: NameMove) -> Self {
        let NameMove {
            name,
            from_hash,
            to_hash,
            moved_by,
            moved_at,
        } = moved;
        Self {
            name,
            module: to_hash,
            previous: from_hash,
            moved_by,
            moved_at,
        }
    }
}

/// `GET /v1/module-names/{name}`: where a name points and how it got there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModuleNameView {
    /// The name.
    pub name: String,
    /// The module it points at.
    pub module: String,
    /// Its moves, newest first (the latest 100).
    pub history: Vec<NameMoveView>,
}

/// `GET /v1/module-names`: a page of names and where they point, in name
/// order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModuleNameList {
    /// Name to module hash.
    pub names: BTreeMap<String, String>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A page of modules, in hash order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModulePage {
    /// The modules.
    pub modules: Vec<ModuleView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Query of a listing paged by cursor: `GET /v1/modules` (the cursor is
/// a hash) and `GET /v1/module-names` (a name).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Page size (default 50, at most 500).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}
