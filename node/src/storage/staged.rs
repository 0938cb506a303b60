//! State machines loaded from received snapshots, handed from the peer receiver
//! to the raft loop. Loading a large body takes seconds; the receiver does it off
//! the loop and refuses a body that does not load, so raft only ever sees a
//! snapshot that is ready to install and the loop never stalls on one.

use std::sync::{Arc, Mutex};

use crate::state_machine::KvStateMachine;

/// As many as the receiver loads at once, so a second receive finishing before
/// raft installs the first never pushes the first out (its file may be pruned
/// by then, and raft has already accepted it).
const SLOTS: usize = 2;

/// A loaded state machine and the (term, index) of the snapshot it came from.
type Staged = ((u64, u64), KvStateMachine);

#[derive(Clone, Default)]
pub struct StagedSnapshot {
    slots: Arc<Mutex<Vec<Staged>>>,
}

impl StagedSnapshot {
    /// Offers the state loaded from the snapshot at (`term`, `index`); beyond
    /// [`SLOTS`] the oldest staged one goes.
    pub fn stage(&self, term: u64, index: u64, sm: KvStateMachine) {
        let mut slots = self.slots.lock().expect("staged snapshots poisoned");
        slots.retain(|(key, _)| *key != (term, index));
        slots.push(((term, index), sm));
        if slots.len() > SLOTS {
            let oldest = slots
                .iter()
                .enumerate()
                .min_by_key(|(_, ((_, index), _))| *index)
                .map(|(i, _)| i)
                .expect("not empty");
            slots.remove(oldest);
        }
    }

    /// Takes the state staged for (`term`, `index`), dropping any older ones:
    /// raft never installs a snapshot older than one it installed.
    pub fn take(&self, term: u64, index: u64) -> Option<KvStateMachine> {
        let mut slots = self.slots.lock().expect("staged snapshots poisoned");
        let found = slots.iter().position(|(key, _)| *key == (term, index));
        let sm = found.map(|i| slots.remove(i).1);
        slots.retain(|((_, i), _)| *i > index);
        sm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_staged_snapshot_does_not_push_out_the_first() {
        let staged = StagedSnapshot::default();
        staged.stage(6, 10, KvStateMachine::default());
        staged.stage(6, 20, KvStateMachine::default());
        assert!(staged.take(6, 10).is_some());
        assert!(staged.take(6, 20).is_some());
        assert!(staged.take(6, 20).is_none());
        // Three at once: the oldest goes; taking one drops the older rest.
        for index in [30, 40, 50] {
            staged.stage(6, index, KvStateMachine::default());
        }
        assert!(staged.take(6, 30).is_none());
        assert!(staged.take(6, 50).is_some());
        assert!(staged.take(6, 40).is_none());
    }
}
