//! What the clients did: every attempt as its own operation, with the instants
//! it was invoked and completed and what came of it. Nothing is retried behind
//! the history's back: a retried put would apply its value twice.

use std::sync::Mutex;
use std::time::Instant;

use tonic::{Code, Status};

use crate::checker::{self, Action};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged; for a get, with the value read.
    Ok(Option<String>),
    /// Certainly had no effect: refused before anything was proposed.
    Failed,
    /// Sent, then lost: a put may still take effect at any later instant.
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Record {
    pub client: usize,
    pub key: String,
    /// `Some(value)` for a put, `None` for a get.
    pub put: Option<String>,
    pub invoke: u64,
    pub complete: u64,
    pub outcome: Outcome,
}

/// What an error means for a put: the node refuses with FAILED_PRECONDITION or
/// INVALID_ARGUMENT before proposing; anything else may follow a proposal.
pub fn write_error(s: &Status) -> Outcome {
    match s.code() {
        Code::FailedPrecondition | Code::InvalidArgument => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

pub struct History {
    start: Instant,
    records: Mutex<Vec<Record>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
}

impl History {
    pub fn new() -> History {
        History {
            start: Instant::now(),
            records: Mutex::default(),
        }
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn push(&self, r: Record) {
        self.records.lock().expect("history poisoned").push(r);
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().expect("history poisoned").clone()
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for r in self.records.lock().expect("history poisoned").iter() {
            match r.outcome {
                Outcome::Ok(_) => c.ok += 1,
                Outcome::Failed => c.failed += 1,
                Outcome::Unknown => c.unknown += 1,
            }
        }
        c
    }

    /// The operations the checker must explain. A failed op and a get without an
    /// answer did nothing observable; an unknown put gets an open end.
    pub fn checker_ops(records: &[Record]) -> Vec<checker::Op> {
        records
            .iter()
            .enumerate()
            .filter_map(|(id, r)| {
                let (action, complete) = match (&r.put, &r.outcome) {
                    (_, Outcome::Failed) | (None, Outcome::Unknown) => return None,
                    (Some(v), Outcome::Unknown) => (Action::Put(v.clone()), None),
                    (Some(v), Outcome::Ok(_)) => (Action::Put(v.clone()), Some(r.complete)),
                    (None, Outcome::Ok(read)) => (Action::Get(read.clone()), Some(r.complete)),
                };
                Some(checker::Op {
                    id,
                    client: r.client,
                    key: r.key.clone(),
                    invoke: r.invoke,
                    complete,
                    action,
                })
            })
            .collect()
    }
}
