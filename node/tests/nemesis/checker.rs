//! Linearizability of a key-value history: the Wing–Gong search with Lowe's
//! memoisation, as Porcupine does it. A map of independent registers is
//! P-compositional (the history is linearizable iff every key's sub-history is),
//! so each key is searched alone and the state space stays small.
//!
//! An operation whose outcome is unknown (it timed out or lost its connection
//! after it was sent) may have taken effect at any instant after its call, or
//! never: it has an open end, the search may linearize it anywhere after its
//! call and is never obliged to. The search is bounded by a number of explored
//! states; past it a key is reported undecided, never linearizable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// What an operation did to its key. Values are unique per put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Put(String),
    /// A linearizable read and what it returned (`None`: the key was absent).
    Get(Option<String>),
}

#[derive(Clone, Debug)]
pub struct Op {
    pub id: usize,
    pub client: usize,
    pub key: String,
    /// Nanoseconds since the run started.
    pub invoke: u64,
    /// `None`: the outcome is unknown, the operation may take effect any time later.
    pub complete: Option<u64>,
    pub action: Action,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |ns: u64| ns as f64 / 1e9;
        let what = match &self.action {
            Action::Put(v) => format!("put {}={v}", self.key),
            Action::Get(Some(v)) => format!("get {} -> {v}", self.key),
            Action::Get(None) => format!("get {} -> absent", self.key),
        };
        match self.complete {
            Some(c) => write!(
                f,
                "op#{} client {} {what} [{:.6}s, {:.6}s]",
                self.id,
                self.client,
                secs(self.invoke),
                secs(c)
            ),
            None => write!(
                f,
                "op#{} client {} {what} [{:.6}s, open: outcome unknown]",
                self.id,
                self.client,
                secs(self.invoke)
            ),
        }
    }
}

/// A key whose sub-history has no linearization.
#[derive(Clone, Debug)]
pub struct Anomaly {
    pub key: String,
    /// The offending operations' ids: the one that could not take effect first.
    pub ops: Vec<usize>,
    pub why: String,
}

#[derive(Clone, Debug)]
pub enum Verdict {
    Linearizable,
    Anomaly(Anomaly),
    /// The search explored this many states without an answer.
    Undecided {
        explored: usize,
    },
}

#[derive(Debug, Default)]
pub struct Report {
    pub keys: BTreeMap<String, Verdict>,
}

impl Report {
    pub fn anomalies(&self) -> Vec<&Anomaly> {
        self.keys
            .values()
            .filter_map(|v| match v {
                Verdict::Anomaly(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    /// Keys the search gave up on, with the states it explored.
    pub fn undecided(&self) -> Vec<(&str, usize)> {
        self.keys
            .iter()
            .filter_map(|(k, v)| match v {
                Verdict::Undecided { explored } => Some((k.as_str(), *explored)),
                _ => None,
            })
            .collect()
    }
}

/// Checks every key of `ops`, exploring at most `max_states` states per key.
pub fn check(ops: &[Op], max_states: usize) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op);
    }
    let keys = by_key
        .into_iter()
        .map(|(k, ops)| (k.to_string(), check_key(k, &ops, max_states)))
        .collect();
    Report { keys }
}

/// One event of the search's doubly linked list: an operation's call or return.
struct Node {
    op: usize,
    call: bool,
    prev: usize,
    next: usize,
}

const HEAD: usize = 0;
const NIL: usize = usize::MAX;

/// The register's content: an index into the key's interned values.
type State = Option<u32>;

/// Gives every operation a definite end, which keeps the search narrow. A put
/// with an unknown outcome that nobody read is dropped: taking effect after
/// everything else (or never) explains it. One that was read must have taken
/// effect before the first read of its value completed, and values are unique,
/// so that completion becomes its end. A get without an answer says nothing.
fn with_definite_ends<'a>(ops: &[&'a Op]) -> Vec<(&'a Op, u64)> {
    let mut first_read: HashMap<&str, u64> = HashMap::new();
    for op in ops {
        if let (Action::Get(Some(v)), Some(c)) = (&op.action, op.complete) {
            let e = first_read.entry(v.as_str()).or_insert(c);
            *e = (*e).min(c);
        }
    }
    ops.iter()
        .filter_map(|op| match (&op.action, op.complete) {
            (_, Some(c)) => Some((*op, c)),
            (Action::Put(v), None) => first_read.get(v.as_str()).map(|c| (*op, *c)),
            (Action::Get(_), None) => None,
        })
        .collect()
}

fn check_key(key: &str, all: &[&Op], max_states: usize) -> Verdict {
    let ended = with_definite_ends(all);
    let ops: Vec<&Op> = ended.iter().map(|(op, _)| *op).collect();
    // A write read before it was even sent (its end became that read's).
    if let Some((put, end)) = ended.iter().find(|(op, end)| *end < op.invoke) {
        let read = ops
            .iter()
            .find(|o| {
                o.complete == Some(*end)
                    && matches!(&o.action, Action::Get(Some(v)) if put.action == Action::Put(v.clone()))
            })
            .expect("the read that ended the put");
        return Verdict::Anomaly(Anomaly {
            key: key.to_string(),
            ops: vec![read.id, put.id],
            why: format!("{read} returned the value of {put}, sent only after the read completed"),
        });
    }
    // Intern values; remember which op wrote each.
    let mut value_index: HashMap<&str, u32> = HashMap::new();
    let mut writer: Vec<usize> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if let Action::Put(v) = &op.action {
            value_index.entry(v).or_insert_with(|| {
                writer.push(i);
                (writer.len() - 1) as u32
            });
        }
    }
    let mut reads: Vec<Option<State>> = Vec::with_capacity(ops.len());
    for op in &ops {
        reads.push(match &op.action {
            Action::Put(_) => None,
            Action::Get(None) => Some(None),
            Action::Get(Some(v)) => match value_index.get(v.as_str()) {
                Some(i) => Some(Some(*i)),
                None => {
                    return Verdict::Anomaly(Anomaly {
                        key: key.to_string(),
                        ops: vec![op.id],
                        why: format!(
                            "{op} read a value that no put (that may have happened) wrote"
                        ),
                    })
                }
            },
        });
    }
    let step = |state: State, i: usize| -> Option<State> {
        match &ops[i].action {
            Action::Put(v) => Some(Some(value_index[v.as_str()])),
            Action::Get(_) => (reads[i] == Some(state)).then_some(state),
        }
    };

    // Calls and returns by time; at equal instants calls come first (the
    // operations are then concurrent, the permissive reading).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
    for (i, (op, complete)) in ended.iter().enumerate() {
        events.push((op.invoke, false, i));
        events.push((*complete, true, i));
    }
    events.sort();
    let mut nodes = vec![Node {
        op: NIL,
        call: false,
        prev: NIL,
        next: NIL,
    }];
    let mut call_node = vec![NIL; ops.len()];
    let mut return_node = vec![NIL; ops.len()];
    for (_, is_return, i) in &events {
        let n = nodes.len();
        let last = n - 1;
        nodes[last].next = n;
        nodes.push(Node {
            op: *i,
            call: !is_return,
            prev: last,
            next: NIL,
        });
        if *is_return {
            return_node[*i] = n;
        } else {
            call_node[*i] = n;
        }
    }
    let unlink = |nodes: &mut Vec<Node>, n: usize| {
        let (p, x) = (nodes[n].prev, nodes[n].next);
        nodes[p].next = x;
        if x != NIL {
            nodes[x].prev = p;
        }
    };
    let relink = |nodes: &mut Vec<Node>, n: usize| {
        let (p, x) = (nodes[n].prev, nodes[n].next);
        nodes[p].next = n;
        if x != NIL {
            nodes[x].prev = n;
        }
    };

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    // The deepest dead end: how many ops were linearized, which op's return was
    // reached without it taking effect, and the register's content then.
    let mut deepest: Option<(usize, usize, State)> = None;
    let mut entry = nodes[HEAD].next;
    loop {
        if nodes[HEAD].next == NIL {
            return Verdict::Linearizable;
        }
        if seen.len() > max_states {
            return Verdict::Undecided {
                explored: seen.len(),
            };
        }
        let n = &nodes[entry];
        if n.call {
            let i = n.op;
            if let Some(next_state) = step(state, i) {
                linearized[i / 64] |= 1 << (i % 64);
                if seen.insert((linearized.clone(), next_state)) {
                    stack.push((entry, state));
                    state = next_state;
                    unlink(&mut nodes, call_node[i]);
                    unlink(&mut nodes, return_node[i]);
                    entry = nodes[HEAD].next;
                    continue;
                }
                linearized[i / 64] &= !(1 << (i % 64));
            }
            entry = nodes[entry].next;
        } else {
            // This op must have taken effect by now and could not: backtrack.
            if deepest.is_none_or(|(d, _, _)| stack.len() >= d) {
                deepest = Some((stack.len(), n.op, state));
            }
            let Some((call, prev_state)) = stack.pop() else {
                let (depth, stuck, held) = deepest.expect("a dead end was recorded");
                return Verdict::Anomaly(explain(key, &ops, &writer, depth, stuck, held));
            };
            let i = nodes[call].op;
            relink(&mut nodes, return_node[i]);
            relink(&mut nodes, call_node[i]);
            linearized[i / 64] &= !(1 << (i % 64));
            state = prev_state;
            entry = nodes[call].next;
        }
    }
}

fn explain(
    key: &str,
    ops: &[&Op],
    writer: &[usize],
    depth: usize,
    stuck: usize,
    held: State,
) -> Anomaly {
    let mut ids = vec![ops[stuck].id];
    let held_by = match held {
        Some(v) => {
            let w = ops[writer[v as usize]];
            ids.push(w.id);
            format!("the value of {w}")
        }
        None => "no value".to_string(),
    };
    let mut why = format!(
        "no linearization of key {key}: after the best order of {depth} of its {} operations, \
         {} could not take effect before it completed; the key then held {held_by}",
        ops.len(),
        ops[stuck]
    );
    if let Action::Get(Some(v)) = &ops[stuck].action {
        if let Some(w) = ops.iter().find(|o| o.action == Action::Put(v.clone())) {
            ids.push(w.id);
            why += &format!("; the value read was written by {w}");
        }
    }
    ids.dedup();
    Anomaly {
        key: key.to_string(),
        ops: ids,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const CAP: usize = 1_000_000;

    fn put(id: usize, client: usize, key: &str, v: &str, at: (u64, u64)) -> Op {
        Op {
            id,
            client,
            key: key.into(),
            invoke: at.0,
            complete: Some(at.1),
            action: Action::Put(v.into()),
        }
    }

    fn get(id: usize, client: usize, key: &str, v: Option<&str>, at: (u64, u64)) -> Op {
        Op {
            id,
            client,
            key: key.into(),
            invoke: at.0,
            complete: Some(at.1),
            action: Action::Get(v.map(Into::into)),
        }
    }

    fn unknown_put(id: usize, client: usize, key: &str, v: &str, invoke: u64) -> Op {
        Op {
            complete: None,
            ..put(id, client, key, v, (invoke, invoke))
        }
    }

    fn anomaly(ops: &[Op]) -> Anomaly {
        let r = check(ops, CAP);
        let a = r.anomalies();
        assert_eq!(a.len(), 1, "one anomalous key expected: {r:?}");
        a[0].clone()
    }

    fn assert_linearizable(ops: &[Op]) {
        let r = check(ops, CAP);
        for (k, v) in &r.keys {
            assert!(matches!(v, Verdict::Linearizable), "key {k}: {v:?}");
        }
    }

    #[test]
    fn a_sequential_history_that_reads_its_last_write_is_linearizable() {
        assert_linearizable(&[
            get(0, 0, "k", None, (0, 1)),
            put(1, 0, "k", "a", (2, 3)),
            get(2, 1, "k", Some("a"), (4, 5)),
            put(3, 1, "k", "b", (6, 7)),
            get(4, 0, "k", Some("b"), (8, 9)),
        ]);
    }

    #[test]
    fn concurrent_writes_may_take_effect_in_either_order() {
        // Both puts overlap; the reads after them agree on b then a.
        assert_linearizable(&[
            put(0, 0, "k", "a", (0, 10)),
            put(1, 1, "k", "b", (0, 10)),
            get(2, 2, "k", Some("b"), (1, 2)),
            get(3, 2, "k", Some("a"), (11, 12)),
            get(4, 3, "k", Some("a"), (13, 14)),
        ]);
    }

    #[test]
    fn a_read_overlapping_a_write_may_see_the_old_or_the_new_value() {
        assert_linearizable(&[
            put(0, 0, "k", "a", (0, 1)),
            put(1, 0, "k", "b", (2, 10)),
            get(2, 1, "k", Some("a"), (3, 4)),
            get(3, 2, "k", Some("b"), (5, 6)),
            get(4, 1, "k", Some("b"), (11, 12)),
        ]);
    }

    #[test]
    fn an_indeterminate_write_may_take_effect_long_after_it_was_sent() {
        assert_linearizable(&[
            put(0, 0, "k", "a", (0, 1)),
            unknown_put(1, 1, "k", "b", 2),
            get(2, 2, "k", Some("a"), (3, 4)),
            get(3, 2, "k", Some("a"), (50, 51)),
            get(4, 0, "k", Some("b"), (100, 101)),
            get(5, 2, "k", Some("b"), (102, 103)),
        ]);
    }

    #[test]
    fn an_indeterminate_write_may_never_take_effect() {
        assert_linearizable(&[
            put(0, 0, "k", "a", (0, 1)),
            unknown_put(1, 1, "k", "b", 2),
            get(2, 2, "k", Some("a"), (10, 11)),
        ]);
    }

    #[test]
    fn an_indeterminate_write_cannot_take_effect_before_it_was_sent() {
        let a = anomaly(&[
            get(0, 0, "k", Some("b"), (0, 1)),
            unknown_put(1, 1, "k", "b", 2),
        ]);
        assert_eq!(a.ops, vec![0, 1], "{a:?}");
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_an_anomaly() {
        let a = anomaly(&[
            put(0, 0, "k", "a", (0, 1)),
            put(1, 1, "k", "b", (2, 3)),
            get(2, 2, "k", Some("a"), (4, 5)),
        ]);
        assert_eq!(a.key, "k");
        assert_eq!(a.ops, vec![2, 1, 0], "{}", a.why);
        assert!(
            a.why.contains("op#2") && a.why.contains("op#1"),
            "{}",
            a.why
        );
    }

    #[test]
    fn a_read_of_a_value_never_written_is_an_anomaly() {
        let a = anomaly(&[
            put(0, 0, "k", "a", (0, 1)),
            get(1, 1, "k", Some("z"), (2, 3)),
        ]);
        assert_eq!((a.key.as_str(), a.ops.as_slice()), ("k", &[1][..]));
        assert!(a.why.contains("no put"), "{}", a.why);
    }

    #[test]
    fn two_reads_that_see_concurrent_writes_in_opposite_orders_are_an_anomaly() {
        let a = anomaly(&[
            put(0, 0, "k", "a", (0, 100)),
            put(1, 1, "k", "b", (0, 100)),
            get(2, 2, "k", Some("a"), (10, 20)),
            get(3, 2, "k", Some("b"), (30, 40)),
            get(4, 3, "k", Some("b"), (10, 20)),
            get(5, 3, "k", Some("a"), (30, 40)),
        ]);
        assert_eq!(a.key, "k");
        assert!(
            a.ops.iter().any(|id| (2..=5).contains(id)),
            "a read is named: {a:?}"
        );
    }

    #[test]
    fn a_read_of_absent_after_a_completed_write_is_an_anomaly() {
        let a = anomaly(&[put(0, 0, "k", "a", (0, 1)), get(1, 1, "k", None, (2, 3))]);
        assert_eq!(a.ops, vec![1, 0]);
    }

    #[test]
    fn keys_are_judged_independently() {
        let r = check(
            &[
                put(0, 0, "x", "a", (0, 1)),
                get(1, 0, "x", Some("a"), (2, 3)),
                put(2, 0, "y", "a", (0, 1)),
                put(3, 1, "y", "b", (2, 3)),
                get(4, 2, "y", Some("a"), (4, 5)),
            ],
            CAP,
        );
        assert!(matches!(r.keys["x"], Verdict::Linearizable));
        let a = r.anomalies();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].key, "y");
    }

    #[test]
    fn a_search_past_its_state_cap_is_undecided_not_linearizable() {
        // Twenty overlapping puts and a read of the first: many orders to try.
        let mut ops: Vec<Op> = (0..20)
            .map(|i| put(i, i, "k", &format!("v{i}"), (0, 100)))
            .collect();
        ops.push(get(20, 20, "k", Some("v0"), (101, 102)));
        let r = check(&ops, 5);
        assert!(matches!(r.keys["k"], Verdict::Undecided { .. }), "{r:?}");
        assert_eq!(r.undecided()[0].0, "k");
        assert!(r.anomalies().is_empty());
    }

    /// Histories of a real register with random overlaps and lost outcomes:
    /// each op takes effect at an instant inside its interval.
    fn simulated(seed: u64, clients: usize, per_client: usize, keys: usize) -> Vec<Op> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut planned = Vec::new(); // (effect instant, op)
        for c in 0..clients {
            let mut t = rng.gen_range(0..50u64);
            for n in 0..per_client {
                let invoke = t;
                let effect = invoke + rng.gen_range(0..40);
                let complete = effect + rng.gen_range(0..40);
                t = complete + rng.gen_range(1..20);
                let key = format!("k{}", rng.gen_range(0..keys));
                let is_put = rng.gen_bool(0.5);
                let lost = is_put && rng.gen_bool(0.05);
                // A lost write takes effect now or much later, or not at all.
                let effect = match (lost, rng.gen_range(0..3)) {
                    (true, 0) => u64::MAX,
                    (true, 1) => effect + rng.gen_range(0..2_000),
                    _ => effect,
                };
                planned.push((effect, c, n, invoke, complete, key, is_put, lost));
            }
        }
        planned.sort();
        let mut reg: HashMap<String, String> = HashMap::new();
        let mut ops = Vec::new();
        for (effect, c, n, invoke, complete, key, is_put, lost) in planned {
            let action = if is_put {
                let v = format!("c{c}-{n}");
                if effect != u64::MAX {
                    reg.insert(key.clone(), v.clone());
                }
                Action::Put(v)
            } else {
                Action::Get(reg.get(&key).cloned())
            };
            ops.push(Op {
                id: ops.len(),
                client: c,
                key,
                invoke,
                complete: (!lost).then_some(complete),
                action,
            });
        }
        ops
    }

    #[test]
    fn long_simulated_histories_of_a_correct_register_are_linearizable() {
        for seed in 0..5 {
            let ops = simulated(seed, 6, 600, 3);
            let r = check(&ops, CAP);
            assert!(
                r.anomalies().is_empty() && r.undecided().is_empty(),
                "seed {seed}: {r:?}"
            );
        }
    }

    #[test]
    fn one_corrupted_read_in_a_long_correct_history_is_found() {
        let mut ops = simulated(7, 6, 600, 3);
        // Make a late read return the first value ever written to its key.
        let (victim, first) = ops
            .iter()
            .rev()
            .filter(|o| matches!(o.action, Action::Get(Some(_))))
            .find_map(|r| {
                let first = ops
                    .iter()
                    .filter(|o| o.key == r.key && o.complete.is_some())
                    .filter(|o| matches!(o.action, Action::Put(_)))
                    .min_by_key(|o| o.complete)?;
                let overwritten = ops.iter().any(|o| {
                    o.key == r.key
                        && matches!(o.action, Action::Put(_))
                        && o.complete.is_some_and(|c| c < r.invoke)
                        && o.invoke > first.complete.unwrap()
                });
                overwritten.then(|| (r.id, first.action.clone()))
            })
            .expect("a read after an overwrite");
        let Action::Put(v) = first else {
            unreachable!()
        };
        ops[victim].action = Action::Get(Some(v));
        let a = anomaly(&ops);
        assert_eq!(a.key, ops[victim].key);
    }
}
