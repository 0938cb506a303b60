//! The nemesis schedule, drawn from the run's seed alone so a printed seed
//! replays the same faults in the same order (targets are picked among the
//! members present when the step runs). The first steps are a shuffle of every
//! kind, so even a short run covers them all.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Leader,
    /// A follower, chosen by this number modulo the followers present.
    Follower(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One member cut off from every other.
    Isolate(Target),
    /// The leader's side a minority (with 3 or 4 voters: the leader alone).
    SplitLeaderInMinority,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9, down for a while, restart on the same address and data.
    Kill(Target, Duration),
    /// SIGSTOP, then SIGCONT after a while.
    Pause(Target, Duration),
    /// Cut links through the proxies, heal after a while.
    Partition(Shape, Duration),
    /// kill -9, restart on a new address, UpsertPeers on every other member.
    Readdress(Target),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Fault(Fault),
    /// The next membership change (add a learner, promote it, remove a
    /// follower, re-add a removed member), made while this fault holds.
    MembershipDuring(Fault),
    Membership,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    pub step: Step,
    /// Quiet time before the step.
    pub gap: Duration,
}

fn ms(rng: &mut StdRng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.gen_range(lo..hi))
}

fn target(rng: &mut StdRng) -> Target {
    if rng.gen_bool(0.4) {
        Target::Leader
    } else {
        Target::Follower(rng.gen())
    }
}

fn fault(rng: &mut StdRng, kind: u8) -> Fault {
    match kind {
        0 => Fault::Kill(target(rng), ms(rng, 300, 2_000)),
        1 => Fault::Pause(target(rng), ms(rng, 500, 3_000)),
        2 => {
            let shape = if rng.gen_bool(0.6) {
                Shape::Isolate(target(rng))
            } else {
                Shape::SplitLeaderInMinority
            };
            Fault::Partition(shape, ms(rng, 500, 3_000))
        }
        _ => Fault::Readdress(target(rng)),
    }
}

/// `len` steps for `seed`.
pub fn schedule(seed: u64, len: usize) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    // Every fault kind, one fault with a membership change inside it, and
    // enough membership steps for add, promote, remove and re-add.
    let mut first: Vec<Option<u8>> = vec![Some(0), Some(1), Some(2), Some(3), None, None, None];
    first.shuffle(&mut rng);
    let mut out = Vec::with_capacity(len);
    let mut during_placed = false;
    for i in 0..len {
        let kind = match first.get(i) {
            Some(k) => *k,
            None if rng.gen_bool(0.35) => None,
            None => Some(rng.gen_range(0..4)),
        };
        let step = match kind {
            None => Step::Membership,
            Some(k) => {
                let f = fault(&mut rng, k);
                let readdress = matches!(f, Fault::Readdress(_));
                if !readdress && (!during_placed || rng.gen_bool(0.25)) {
                    during_placed = true;
                    Step::MembershipDuring(f)
                } else {
                    Step::Fault(f)
                }
            }
        };
        let gap = ms(&mut rng, 200, 1_000);
        out.push(Planned { step, gap });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_schedule() {
        assert_eq!(schedule(42, 50), schedule(42, 50));
        assert_ne!(schedule(42, 50), schedule(43, 50));
    }

    #[test]
    fn the_first_seven_steps_cover_every_fault_and_membership() {
        for seed in 0..100 {
            let s = schedule(seed, 7);
            let faults: Vec<Fault> = s
                .iter()
                .filter_map(|p| match p.step {
                    Step::Fault(f) | Step::MembershipDuring(f) => Some(f),
                    Step::Membership => None,
                })
                .collect();
            assert!(faults.iter().any(|f| matches!(f, Fault::Kill(..))));
            assert!(faults.iter().any(|f| matches!(f, Fault::Pause(..))));
            assert!(faults.iter().any(|f| matches!(f, Fault::Partition(..))));
            assert!(faults.iter().any(|f| matches!(f, Fault::Readdress(..))));
            let has = |f: fn(&Step) -> bool| s.iter().any(|p| f(&p.step));
            assert!(has(|s| matches!(s, Step::MembershipDuring(_))));
            let changes = s
                .iter()
                .filter(|p| !matches!(p.step, Step::Fault(_)))
                .count();
            assert!(changes >= 4, "seed {seed}: {s:?}");
        }
    }
}
