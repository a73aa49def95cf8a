//! Segment files as read from an object store: footer, index and blocks from
//! arbitrary bytes must be errors, never panics or huge allocations.
#![no_main]

use cairn_log::segment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(footer) = segment::read_footer(data) else { return };
    let Ok(range) = segment::index_range(&footer, data.len() as u64) else { return };
    let Some(index_bytes) = data.get(range.start as usize..range.end as usize) else { return };
    let Ok(index) = segment::read_index(&footer, index_bytes) else { return };
    for entry in &index {
        let r = entry.range();
        if let Some(block) = data.get(r.start as usize..r.end as usize) {
            let _ = segment::read_block(entry, block);
        }
    }
});
