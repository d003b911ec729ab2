//! Record batch validation and record iteration on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlog_wire::RecordBatch;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = RecordBatch::parse(data) {
        if let Ok(records) = batch.records() {
            for r in records {
                let _ = r;
            }
        }
    }
    let _ = RecordBatch::parse_header_and_crc(data);
});
