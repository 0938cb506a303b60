//! A state machine loaded from a received snapshot, handed from the peer receiver
//! to the raft loop. Loading a large body takes seconds; the receiver does it off
//! the loop and refuses a body that does not load, so raft only ever sees a
//! snapshot that is ready to install and the loop never stalls on one.

use std::sync::{Arc, Mutex};

use crate::state_machine::KvStateMachine;

/// A loaded state machine and the (term, index) of the snapshot it came from.
type Staged = ((u64, u64), KvStateMachine);

/// One slot: the newest loaded snapshot.
#[derive(Clone, Default)]
pub struct StagedSnapshot {
    slot: Arc<Mutex<Option<Staged>>>,
}

impl StagedSnapshot {
    /// Offers the state loaded from the snapshot at (`term`, `index`), replacing
    /// any older one that raft never asked to install.
    pub fn stage(&self, term: u64, index: u64, sm: KvStateMachine) {
        *self.slot.lock().expect("staged snapshot poisoned") = Some(((term, index), sm));
    }

    /// Takes the state staged for (`term`, `index`), if that is what is staged.
    pub fn take(&self, term: u64, index: u64) -> Option<KvStateMachine> {
        let mut slot = self.slot.lock().expect("staged snapshot poisoned");
        match slot.as_ref() {
            Some((key, _)) if *key == (term, index) => slot.take().map(|(_, sm)| sm),
            _ => None,
        }
    }
}
