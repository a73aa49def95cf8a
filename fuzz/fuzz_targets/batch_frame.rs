//! Batch frames, as the WAL, segments and producers' Produce requests carry
//! them: any bytes must be refused or decode, never panic; a frame the
//! agent's validation accepts must decode to exactly the records it counted,
//! and rebuilding it from those records gives the same frame (uncompressed)
//! or the same records (compressed).
#![no_main]

use cairn_log::batch::{self, Compression, FrameBuilder, FrameLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = batch::frame(data) {
        let _ = frame.records();
        let _ = frame.timestamps();
    }
    let limits = FrameLimits {
        max_records: 10_000,
        max_record_bytes: 1 << 20,
        max_bytes: 4 << 20,
    };
    let mut scratch = Vec::new();
    let Ok(checked) = batch::validate(data, &limits, &mut scratch) else {
        return;
    };
    let frame = batch::frame(data).expect("a validated frame parses");
    let records = frame.records().expect("a validated frame decodes");
    assert_eq!(records.len(), checked.count as usize);
    let mut rebuilt = FrameBuilder::with_capacity(0);
    frame
        .for_each_record(&mut scratch, |r| {
            let headers: Vec<(&str, &[u8])> = r.headers().collect();
            assert_eq!(headers.len(), r.header_count as usize);
            rebuilt.push(r.key, r.value, r.timestamp_ms, headers.into_iter());
            Ok(())
        })
        .expect("a validated frame walks");
    let again = rebuilt.finish(&frame.header, checked.compression);
    if checked.compression == Compression::None {
        assert_eq!(&again[..], data, "an uncompressed frame rebuilds byte for byte");
    }
    let reread = batch::frame(&again).expect("a rebuilt frame parses");
    assert_eq!(reread.records().expect("and decodes"), records);
});
