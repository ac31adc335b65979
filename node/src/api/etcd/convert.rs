//! etcd's protobuf messages to and from the MVCC store's types: pure, so every rule about what
//! etcd accepts is here and tested here. Errors carry etcd's gRPC codes and messages, which
//! clients match on.

use concord_proto::etcd::etcdserverpb as pb;
use concord_proto::etcd::mvccpb;
use tonic::{Code, Status};

use crate::config::Limits;
use crate::store::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRequest, KeyRange, KeyValue, MvccError, Op,
    OpResult, PutRequest, RangeRequest, RangeResult, SortOrder, SortTarget, TxnRequest, TxnResult,
};

/// etcd's status for a store refusal (`api/v3rpc/rpctypes`).
pub fn mvcc_status(e: &MvccError) -> Status {
    let code = match e {
        MvccError::Compacted { .. } | MvccError::FutureRevision { .. } => Code::OutOfRange,
        MvccError::KeyNotFound | MvccError::DuplicateKey | MvccError::TooManyOps => {
            Code::InvalidArgument
        }
        MvccError::LeaseNotFound => Code::NotFound,
        MvccError::LeaseExists => Code::FailedPrecondition,
        MvccError::LeaseTtlTooLarge => Code::OutOfRange,
    };
    let message = match e {
        // The store's own message is etcd's mvcc one; etcd's server prefixes it.
        MvccError::Compacted { .. } | MvccError::FutureRevision { .. } => {
            format!("etcdserver: {e}")
        }
        _ => e.to_string(),
    };
    Status::new(code, message)
}

fn invalid(message: &str) -> Status {
    Status::invalid_argument(message.to_string())
}

fn key_range(key: Vec<u8>, range_end: Vec<u8>, limits: &Limits) -> Result<KeyRange, Status> {
    if key.is_empty() {
        return Err(invalid("etcdserver: key is not provided"));
    }
    if key.len() > limits.max_key_bytes || range_end.len() > limits.max_key_bytes {
        return Err(invalid("etcdserver: request is too large"));
    }
    Ok(KeyRange::from_etcd(key, range_end))
}

fn revision(r: i64) -> Result<u64, Status> {
    u64::try_from(r).map_err(|_| invalid("etcdserver: revision must not be negative"))
}

pub fn range_request(r: pb::RangeRequest, limits: &Limits) -> Result<RangeRequest, Status> {
    let sort_order = match r.sort_order() {
        pb::range_request::SortOrder::None => SortOrder::None,
        pb::range_request::SortOrder::Ascend => SortOrder::Ascend,
        pb::range_request::SortOrder::Descend => SortOrder::Descend,
    };
    let sort_target = match r.sort_target() {
        pb::range_request::SortTarget::Key => SortTarget::Key,
        pb::range_request::SortTarget::Version => SortTarget::Version,
        pb::range_request::SortTarget::Create => SortTarget::Create,
        pb::range_request::SortTarget::Mod => SortTarget::Mod,
        pb::range_request::SortTarget::Value => SortTarget::Value,
    };
    Ok(RangeRequest {
        keys: Some(key_range(r.key, r.range_end, limits)?),
        revision: revision(r.revision)?,
        // etcd reads a negative limit as none.
        limit: u64::try_from(r.limit).unwrap_or(0),
        keys_only: r.keys_only,
        count_only: r.count_only,
        sort_order,
        sort_target,
        min_mod_revision: revision(r.min_mod_revision)?,
        max_mod_revision: revision(r.max_mod_revision)?,
        min_create_revision: revision(r.min_create_revision)?,
        max_create_revision: revision(r.max_create_revision)?,
    })
}

pub fn put_request(r: pb::PutRequest, limits: &Limits) -> Result<PutRequest, Status> {
    if r.key.is_empty() {
        return Err(invalid("etcdserver: key is not provided"));
    }
    if r.key.len() > limits.max_key_bytes || r.value.len() > limits.max_value_bytes {
        return Err(invalid("etcdserver: request is too large"));
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(invalid("etcdserver: value is provided"));
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(invalid("etcdserver: lease is provided"));
    }
    Ok(PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    })
}

pub fn delete_request(r: pb::DeleteRangeRequest, limits: &Limits) -> Result<DeleteRequest, Status> {
    Ok(DeleteRequest {
        keys: key_range(r.key, r.range_end, limits)?,
        prev_kv: r.prev_kv,
    })
}

fn compare(c: pb::Compare, limits: &Limits) -> Result<Compare, Status> {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match c.result() {
        R::Equal => CompareResult::Equal,
        R::Greater => CompareResult::Greater,
        R::Less => CompareResult::Less,
        R::NotEqual => CompareResult::NotEqual,
    };
    // The target says which member of the union to read; a missing member is its zero value,
    // as protobuf's default.
    let union = c.target_union.clone();
    let int = |v: Option<i64>| revision(v.unwrap_or(0));
    let target = match c.target() {
        T::Version => CompareTarget::Version(int(match union {
            Some(U::Version(v)) => Some(v),
            _ => None,
        })?),
        T::Create => CompareTarget::Create(int(match union {
            Some(U::CreateRevision(v)) => Some(v),
            _ => None,
        })?),
        T::Mod => CompareTarget::Mod(int(match union {
            Some(U::ModRevision(v)) => Some(v),
            _ => None,
        })?),
        T::Value => CompareTarget::Value(match union {
            Some(U::Value(v)) => v,
            _ => Vec::new(),
        }),
        T::Lease => CompareTarget::Lease(match union {
            Some(U::Lease(v)) => v,
            _ => 0,
        }),
    };
    Ok(Compare {
        keys: key_range(c.key, c.range_end, limits)?,
        result,
        target,
    })
}

fn op(o: pb::RequestOp, limits: &Limits) -> Result<Op, Status> {
    use pb::request_op::Request;
    Ok(match o.request {
        Some(Request::RequestRange(r)) => Op::Range(range_request(r, limits)?),
        Some(Request::RequestPut(p)) => Op::Put(put_request(p, limits)?),
        Some(Request::RequestDeleteRange(d)) => Op::Delete(delete_request(d, limits)?),
        Some(Request::RequestTxn(t)) => Op::Txn(txn_request(t, limits)?),
        None => return Err(invalid("etcdserver: a request operation is empty")),
    })
}

pub fn txn_request(t: pb::TxnRequest, limits: &Limits) -> Result<TxnRequest, Status> {
    let txn = TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(|c| compare(c, limits))
            .collect::<Result<_, _>>()?,
        success: t
            .success
            .into_iter()
            .map(|o| op(o, limits))
            .collect::<Result<_, _>>()?,
        failure: t
            .failure
            .into_iter()
            .map(|o| op(o, limits))
            .collect::<Result<_, _>>()?,
    };
    crate::store::mvcc::MvccStore::check_txn(&txn).map_err(|e| mvcc_status(&e))?;
    Ok(txn)
}

pub fn kv(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision as i64,
        mod_revision: kv.mod_revision as i64,
        version: kv.version as i64,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn range_response(header: pb::ResponseHeader, r: RangeResult) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(header),
        kvs: r.kvs.into_iter().map(kv).collect(),
        more: r.more,
        count: r.count as i64,
    }
}

/// A transaction's result as etcd shapes it; every nested response carries the same header.
pub fn txn_response(header: pb::ResponseHeader, r: TxnResult) -> pb::TxnResponse {
    use pb::response_op::Response;
    let responses = r
        .responses
        .into_iter()
        .map(|res| pb::ResponseOp {
            response: Some(match res {
                OpResult::Range(r) => Response::ResponseRange(range_response(header, r)),
                OpResult::Put { prev_kv } => Response::ResponsePut(pb::PutResponse {
                    header: Some(header),
                    prev_kv: prev_kv.map(kv),
                }),
                OpResult::Delete { deleted, prev_kvs } => {
                    Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header: Some(header),
                        deleted: deleted as i64,
                        prev_kvs: prev_kvs.into_iter().map(kv).collect(),
                    })
                }
                OpResult::Txn(t) => Response::ResponseTxn(txn_response(header, t)),
            }),
        })
        .collect();
    pb::TxnResponse {
        header: Some(header),
        succeeded: r.succeeded,
        responses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn etcds_refusals_keep_etcds_codes_and_messages() {
        let empty = range_request(pb::RangeRequest::default(), &limits()).unwrap_err();
        assert_eq!(empty.code(), Code::InvalidArgument);
        assert_eq!(empty.message(), "etcdserver: key is not provided");
        let s = mvcc_status(&MvccError::Compacted { compacted: 5 });
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = mvcc_status(&MvccError::FutureRevision { current: 5 });
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision is a future revision"
        );
        let put = |k: &[u8]| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: k.to_vec(),
                ..Default::default()
            })),
        };
        let dup = txn_request(
            pb::TxnRequest {
                success: vec![put(b"a"), put(b"a")],
                ..Default::default()
            },
            &limits(),
        )
        .unwrap_err();
        assert_eq!(
            (dup.code(), dup.message()),
            (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request"
            )
        );
        let many = txn_request(
            pb::TxnRequest {
                success: (0..200).map(|i| put(format!("k{i}").as_bytes())).collect(),
                ..Default::default()
            },
            &limits(),
        )
        .unwrap_err();
        assert_eq!(
            many.message(),
            "etcdserver: too many operations in txn request"
        );
    }

    #[test]
    fn a_compare_reads_the_member_of_the_union_its_target_names() {
        use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
        let c = pb::Compare {
            result: R::Greater as i32,
            target: T::Mod as i32,
            key: b"k".to_vec(),
            target_union: Some(U::ModRevision(7)),
            ..Default::default()
        };
        let c = compare(c, &limits()).expect("valid");
        assert_eq!(c.target, CompareTarget::Mod(7));
        assert_eq!(c.result, CompareResult::Greater);
        assert_eq!(c.keys, KeyRange::One(b"k".to_vec()));
    }
}
