//! The telemetry record container (`cairn.ingest.v1.TelemetryRecord`) and
//! what ReadSpans makes of a stored record: never a panic on any bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cairn_ingest::spans::message_for(0, 0, 0, data);
    if let Ok(record) = cairn_ingest::otlp::decode_record(data) {
        let _ = cairn_ingest::otlp::decode_item(&record);
    }
});
