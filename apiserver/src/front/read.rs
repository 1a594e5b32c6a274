//! What one read at the peer front may ask etcd for: at most a page.
//!
//! A `KV/Range` over a prefix without a limit makes etcd walk and answer
//! every key of it in one go: with thousands of records that is a spike of
//! etcd and front CPU which every other reader waits behind, however the
//! peer's call and byte rates are set. So before a Range reaches etcd, its
//! gRPC message is looked at: a range (not a single key) whose `limit` is 0
//! or above the front's page gets the page as its limit. etcd then answers
//! with `more: true`, and a client that pages (every KVStoreMesh does, and
//! so does `etcdctl`'s paginated get) carries on from the last key. A
//! single-key get and a smaller limit go through untouched.
//!
//! The limit is set by appending field 3 to the message: in protobuf the
//! last value of a scalar field wins, so every other field the peer sent
//! reaches etcd byte for byte. Pure; the relay in [`crate::front::relay`]
//! collects the request and calls [`clamp_range`].

use hyper::body::Bytes;

/// The fields of etcd's `RangeRequest` this module reads (the rest are
/// kept as they are, never decoded).
#[derive(Clone, PartialEq, prost::Message)]
struct RangeBounds {
    /// `range_end`: empty for a single key.
    #[prost(bytes = "vec", tag = "2")]
    range_end: Vec<u8>,
    /// `limit`: 0 for no limit.
    #[prost(int64, tag = "3")]
    limit: i64,
}

/// Why a Range request was not relayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeRefusal {
    /// Not one whole, uncompressed gRPC message.
    Malformed(&'static str),
}

/// The gRPC message of a Range request (`body`, with its 5-byte gRPC
/// prefix) as it goes to etcd: with `limit` set to `page` when it asks a
/// range for more than that, else unchanged.
pub fn clamp_range(body: Bytes, page: i64) -> Result<Bytes, RangeRefusal> {
    let Some((&compressed, rest)) = body.split_first() else {
        return Err(RangeRefusal::Malformed("an empty request"));
    };
    if compressed != 0 {
        return Err(RangeRefusal::Malformed("a compressed request"));
    }
    let Some((length, message)) = rest.split_first_chunk::<4>() else {
        return Err(RangeRefusal::Malformed("a request shorter than its gRPC prefix"));
    };
    if u32::from_be_bytes(*length) as usize != message.len() {
        return Err(RangeRefusal::Malformed(
            "a request whose length is not its gRPC prefix's",
        ));
    }
    let bounds = <RangeBounds as prost::Message>::decode(message)
        .map_err(|_| RangeRefusal::Malformed("a request that is not a RangeRequest"))?;
    if bounds.range_end.is_empty() || (bounds.limit > 0 && bounds.limit <= page) {
        return Ok(body);
    }
    let mut limit = Vec::with_capacity(11);
    limit.push(3 << 3);
    prost::encoding::encode_varint(page as u64, &mut limit);
    let mut clamped = Vec::with_capacity(body.len() + limit.len());
    clamped.push(0);
    clamped.extend_from_slice(&((message.len() + limit.len()) as u32).to_be_bytes());
    clamped.extend_from_slice(message);
    clamped.extend_from_slice(&limit);
    Ok(Bytes::from(clamped))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// etcd's `RangeRequest`, every field this test sets.
    #[derive(Clone, PartialEq, prost::Message)]
    struct RangeRequest {
        #[prost(bytes = "vec", tag = "1")]
        key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        range_end: Vec<u8>,
        #[prost(int64, tag = "3")]
        limit: i64,
        #[prost(int64, tag = "4")]
        revision: i64,
        #[prost(bool, tag = "8")]
        keys_only: bool,
    }

    fn framed(request: &RangeRequest) -> Bytes {
        let message = prost::Message::encode_to_vec(request);
        let mut body = vec![0];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(&message);
        Bytes::from(body)
    }

    fn unframed(body: &[u8]) -> RangeRequest {
        let length = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert_eq!(
            length,
            body.len() - 5,
            "the gRPC prefix names the message's length"
        );
        <RangeRequest as prost::Message>::decode(&body[5..]).unwrap()
    }

    fn list(limit: i64) -> RangeRequest {
        RangeRequest {
            key: b"knit/v1/clusters/a/".to_vec(),
            range_end: b"knit/v1/clusters/a0".to_vec(),
            limit,
            revision: 42,
            keys_only: true,
        }
    }

    #[test]
    fn a_list_without_a_limit_or_above_the_page_gets_the_page_and_keeps_every_other_field() {
        for asked in [0, 5000, i64::MAX] {
            let sent = clamp_range(framed(&list(asked)), 1000).unwrap();
            assert_eq!(unframed(&sent), list(1000), "asked for {asked}");
        }
    }

    #[test]
    fn single_keys_and_lists_within_the_page_go_through_byte_for_byte() {
        let single = RangeRequest {
            key: b"knit/v1/clusters/a/synced/nodes".to_vec(),
            ..RangeRequest::default()
        };
        for request in [single, list(1), list(1000)] {
            let body = framed(&request);
            assert_eq!(clamp_range(body.clone(), 1000).unwrap(), body);
        }
    }

    #[test]
    fn what_is_not_one_plain_range_message_is_refused() {
        let body = framed(&list(0));
        let mut compressed = body.to_vec();
        compressed[0] = 1;
        let mut short = body.to_vec();
        short.pop();
        for (bad, why) in [
            (Bytes::new(), "an empty request"),
            (Bytes::from(compressed), "a compressed request"),
            (
                Bytes::from_static(&[0, 0]),
                "a request shorter than its gRPC prefix",
            ),
            (
                Bytes::from(short),
                "a request whose length is not its gRPC prefix's",
            ),
            (
                Bytes::from_static(&[0, 0, 0, 0, 2, 0x18, 0x80]),
                "a request that is not a RangeRequest",
            ),
        ] {
            assert_eq!(clamp_range(bad, 1000), Err(RangeRefusal::Malformed(why)));
        }
    }
}
