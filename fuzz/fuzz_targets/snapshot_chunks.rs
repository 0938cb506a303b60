#![no_main]
//! See node/tests/fuzz/targets.rs for what this target checks.

#[path = "../../node/tests/fuzz/targets.rs"]
mod targets;

#[global_allocator]
static ALLOC: targets::alloc::Counting = targets::alloc::Counting;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::snapshot_stream_bytes(data));
