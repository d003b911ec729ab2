//! A broker's view of incoming bytes: delimit a frame, split its header, decode every request body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlog_wire::protocol::frame::{
    check_frame, decode_request, decode_request_body, REQUEST_HEADER_BYTES,
};
use mlog_wire::protocol::messages::*;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(n)) = check_frame(data, REQUEST_HEADER_BYTES, 1 << 20) {
        if let Ok((_, body)) = decode_request(&data[..n]) {
            let _ = decode_request_body::<MetadataRequest>(body, "x");
            let _ = decode_request_body::<CreateTopicsRequest>(body, "x");
            let _ = decode_request_body::<DeleteTopicsRequest>(body, "x");
            let _ = decode_request_body::<ProduceRequest<'_>>(body, "x");
            let _ = decode_request_body::<FetchRequest>(body, "x");
            let _ = decode_request_body::<ListOffsetsRequest>(body, "x");
            let _ = decode_request_body::<OffsetCommitRequest>(body, "x");
            let _ = decode_request_body::<OffsetFetchRequest>(body, "x");
            let _ = decode_request_body::<InitProducerIdRequest>(body, "x");
        }
    }
});
