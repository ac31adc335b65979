//! The bodies the HTTP API reads and writes, as types: the handlers build their answers from
//! them and parse requests into them, and the OpenAPI document (`openapi.rs`) takes its
//! schemas from the same types, so the two cannot drift apart.
//!
//! Request bodies are parsed field by field (not by serde's derive) so that each refusal names
//! the field and what is wrong with it; a value is moved out of the parsed body, never copied.

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::error::ApiError;

/// Every error: `retryable` says whether the same request may simply be sent again.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub retryable: bool,
}

fn take_string(map: &mut Map<String, Value>, name: &str) -> Result<String, ApiError> {
    match map.remove(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::bad_request(format!(
            "field \"{name}\" must be a string"
        ))),
        None => Err(ApiError::bad_request(format!("missing field \"{name}\""))),
    }
}

fn take_u64(map: &mut Map<String, Value>, name: &str) -> Result<Option<u64>, ApiError> {
    match map.remove(name) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("field \"{name}\" must be a non-negative integer"))
        }),
    }
}

fn required<T>(v: Option<T>, name: &str) -> Result<T, ApiError> {
    v.ok_or_else(|| ApiError::bad_request(format!("missing field \"{name}\"")))
}

/// `POST /api/set`. With `lease` the key is attached to that lease (and deleted with it); with
/// `ttl` a lease of that many seconds is granted for the key (at most one of the two).
#[derive(ToSchema)]
pub struct SetRequest {
    pub key: String,
    pub value: String,
    pub lease: Option<u64>,
    pub ttl: Option<u64>,
}

impl SetRequest {
    pub fn from_body(mut map: Map<String, Value>) -> Result<SetRequest, ApiError> {
        let r = SetRequest {
            key: take_string(&mut map, "key")?,
            value: take_string(&mut map, "value")?,
            lease: take_u64(&mut map, "lease")?,
            ttl: take_u64(&mut map, "ttl")?,
        };
        if r.lease.is_some() && r.ttl.is_some() {
            return Err(ApiError::bad_request(
                "give at most one of \"lease\" (an existing lease) and \"ttl\" (a new one)",
            ));
        }
        Ok(r)
    }
}

/// `POST /api/auth/authenticate`.
#[derive(ToSchema)]
pub struct AuthenticateRequest {
    pub name: String,
    pub password: String,
}

impl AuthenticateRequest {
    pub fn from_body(mut map: Map<String, Value>) -> Result<AuthenticateRequest, ApiError> {
        Ok(AuthenticateRequest {
            name: take_string(&mut map, "name")?,
            password: take_string(&mut map, "password")?,
        })
    }
}

/// A token: sent as `Authorization: Bearer TOKEN` (HTTP API) or as the `token` metadata or
/// `Authorization` header (etcd API), on any member, until it expires.
#[derive(Serialize, ToSchema)]
pub struct AuthenticateResponse {
    pub token: String,
}

/// `POST /api/lease/grant`.
#[derive(ToSchema)]
pub struct LeaseGrantRequest {
    /// Seconds (raised to the minimum, 1.5 election timeouts).
    pub ttl: u64,
    /// The id wanted; absent or 0: the cluster chooses.
    pub id: Option<u64>,
}

impl LeaseGrantRequest {
    pub fn from_body(mut map: Map<String, Value>) -> Result<LeaseGrantRequest, ApiError> {
        Ok(LeaseGrantRequest {
            ttl: required(take_u64(&mut map, "ttl")?, "ttl")?,
            id: take_u64(&mut map, "id")?,
        })
    }
}

/// `POST /api/lease/keepalive` and `POST /api/lease/revoke`.
#[derive(ToSchema)]
pub struct LeaseIdRequest {
    pub id: u64,
}

impl LeaseIdRequest {
    pub fn from_body(mut map: Map<String, Value>) -> Result<LeaseIdRequest, ApiError> {
        Ok(LeaseIdRequest {
            id: required(take_u64(&mut map, "id")?, "id")?,
        })
    }
}

/// A lease granted or renewed: its id and TTL in seconds.
#[derive(Serialize, ToSchema)]
pub struct LeaseResponse {
    pub id: u64,
    pub ttl: i64,
}

#[derive(Serialize, ToSchema)]
pub struct LeaseRevokeResponse {
    pub ok: bool,
    pub id: u64,
    /// The revision at which its keys were deleted.
    pub revision: u64,
}

/// `GET /api/lease/{id}`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseInfo {
    pub id: u64,
    /// Seconds left (rounded up).
    pub ttl: i64,
    pub granted_ttl: i64,
    pub keys: Vec<String>,
}

/// `POST /api/cas`: swap in `value` if the key holds `expected`; `expected: null` means the key
/// must be absent. `expected` must be present.
#[derive(ToSchema)]
pub struct CasRequest {
    pub key: String,
    #[schema(required = true)]
    pub expected: Option<String>,
    pub value: String,
}

impl CasRequest {
    pub fn from_body(mut map: Map<String, Value>) -> Result<CasRequest, ApiError> {
        let key = take_string(&mut map, "key")?;
        let value = take_string(&mut map, "value")?;
        let expected = match map.remove("expected") {
            Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "field \"expected\" must be a string or null",
                ))
            }
            None => {
                return Err(ApiError::bad_request(
                    "missing field \"expected\" (use null to require that the key is absent)",
                ))
            }
        };
        Ok(CasRequest {
            key,
            expected,
            value,
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct SetResponse {
    pub ok: bool,
    pub key: String,
    /// The Raft log index the write was committed at.
    pub revision: u64,
    /// The lease the key is attached to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct GetResponse {
    pub key: String,
    pub value: String,
    pub revision: u64,
}

#[derive(Serialize, ToSchema)]
pub struct DeleteResponse {
    pub ok: bool,
    pub key: String,
    pub deleted: bool,
    pub revision: u64,
}

#[derive(Serialize, ToSchema)]
pub struct CasResponse {
    pub ok: bool,
    pub key: String,
    pub swapped: bool,
    pub revision: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Current {
    pub value: String,
    pub revision: u64,
}

/// 409 from `cas`: what is there now (`null`: the key is absent).
#[derive(Serialize, ToSchema)]
pub struct CasConflict {
    pub error: String,
    pub retryable: bool,
    pub key: String,
    pub swapped: bool,
    pub current: Option<Current>,
}

#[derive(Serialize, ToSchema)]
pub struct KeysResponse {
    pub keys: Vec<String>,
    /// Pass as `continue` for the next page; `null` on the last one.
    #[serde(rename = "continue")]
    #[schema(rename = "continue")]
    pub next: Option<String>,
}

/// One member of `POST /admin/init`, and the body of `POST /admin/learners`.
#[derive(ToSchema)]
pub struct MemberBody {
    pub id: u64,
    pub name: String,
    pub address: String,
}

impl MemberBody {
    pub fn from_body(mut map: Map<String, Value>) -> Result<MemberBody, ApiError> {
        Ok(MemberBody {
            id: required(take_u64(&mut map, "id")?, "id")?,
            name: take_string(&mut map, "name")?,
            address: take_string(&mut map, "address")?,
        })
    }
}

/// `POST /admin/init`: the first members (empty or absent: this node alone).
#[derive(ToSchema)]
pub struct InitBody {
    pub members: Option<Vec<MemberBody>>,
}

impl InitBody {
    pub fn from_body(mut map: Map<String, Value>) -> Result<InitBody, ApiError> {
        let members = match map.remove("members") {
            None => None,
            Some(Value::Array(items)) => Some(
                items
                    .into_iter()
                    .map(|m| match m {
                        Value::Object(o) => MemberBody::from_body(o),
                        _ => Err(ApiError::bad_request(
                            "each member must be an object {id, name, address}",
                        )),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => return Err(ApiError::bad_request("\"members\" must be an array")),
        };
        Ok(InitBody { members })
    }
}

/// `POST /admin/promote`.
#[derive(ToSchema)]
pub struct PromoteBody {
    pub id: u64,
}

impl PromoteBody {
    pub fn from_body(mut map: Map<String, Value>) -> Result<PromoteBody, ApiError> {
        Ok(PromoteBody {
            id: required(take_u64(&mut map, "id")?, "id")?,
        })
    }
}

/// `POST /admin/remove`: `force` removes a voter even if the rest would lose quorum margin.
#[derive(ToSchema)]
pub struct RemoveBody {
    pub id: u64,
    pub force: Option<bool>,
}

impl RemoveBody {
    pub fn from_body(mut map: Map<String, Value>) -> Result<RemoveBody, ApiError> {
        let id = required(take_u64(&mut map, "id")?, "id")?;
        let force = match map.remove("force") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(b),
            Some(_) => return Err(ApiError::bad_request("field \"force\" must be a boolean")),
        };
        Ok(RemoveBody { id, force })
    }
}

/// `POST /admin/transfer-leader`: `to` absent or 0 lets the leader choose.
#[derive(ToSchema)]
pub struct TransferBody {
    pub to: Option<u64>,
}

impl TransferBody {
    pub fn from_body(mut map: Map<String, Value>) -> Result<TransferBody, ApiError> {
        Ok(TransferBody {
            to: take_u64(&mut map, "to")?,
        })
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminDone {
    pub ok: bool,
    pub message: String,
    pub log_index: u64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    pub id: u64,
    pub name: String,
    pub address: String,
    pub role: String,
    pub leader: bool,
    pub matched_index: u64,
    pub lag: u64,
    /// Milliseconds since the leader last heard from it; `null` if never.
    pub last_contact_ms: Option<u64>,
    pub reachable: bool,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MembersResponse {
    pub leader_id: u64,
    pub last_log_index: u64,
    pub members: Vec<MemberView>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub id: u64,
    pub name: String,
    pub cluster_id: String,
    pub initialized: bool,
    pub role: String,
    pub term: u64,
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub incarnation: String,
    pub version: String,
    pub address: String,
    pub ready: bool,
}
