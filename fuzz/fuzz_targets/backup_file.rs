#![no_main]
//! See node/tests/fuzz/targets.rs for what this target checks.

#[path = "../../node/tests/fuzz/targets.rs"]
mod targets;

#[global_allocator]
static ALLOC: targets::alloc::Counting = targets::alloc::Counting;

thread_local! {
    static TARGET: targets::BackupTarget = targets::BackupTarget::new();
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    TARGET.with(|t| {
        let _ = targets::backup_file(t, data);
    });
});
