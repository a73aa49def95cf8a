//! WAL and segment batch frames: any bytes must decode to an error or to a
//! batch that encodes back to the same frame, never a panic.
#![no_main]

use cairn_log::batch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((len, body)) = batch::frame(data) {
        if let Ok((header, records)) = batch::decode(body) {
            let mut again = Vec::new();
            batch::encode(&header, &records, &mut again);
            assert_eq!(&again[..], &data[..len], "a decoded frame re-encodes identically");
        }
    }
    let _ = batch::decode_header(data);
    let _ = batch::decode(data);
});
