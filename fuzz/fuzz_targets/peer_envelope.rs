#![no_main]
//! See node/tests/fuzz/targets.rs for what this target checks.

#[path = "../../node/tests/fuzz/targets.rs"]
mod targets;

#[global_allocator]
static ALLOC: targets::alloc::Counting = targets::alloc::Counting;

use std::cell::RefCell;

thread_local! {
    static TARGET: RefCell<targets::EnvelopeTarget> = RefCell::new(targets::EnvelopeTarget::new());
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    TARGET.with(|t| targets::peer_envelope(&mut t.borrow_mut(), data));
});
