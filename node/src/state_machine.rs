//! The replicated state: an ordered key-value map, changed only by committed
//! log commands, dumped to and loaded from snapshot bodies as a stream.
//!
//! The map is persistent (structurally shared): cloning it is O(1), so the raft
//! loop hands an immutable view of the state to a blocking task that writes the
//! snapshot, instead of deep-copying every pair while ticks and heartbeats wait.

use std::io::{self, Read, Write};
use std::ops::Bound;

use raftlane_proto::kv::{log_command::Op, KeyValue, LogCommand};
use rpds::RedBlackTreeMapSync;

/// Largest key or value a snapshot body may declare; guards loads of corrupt bodies.
const MAX_ITEM_LEN: u32 = 64 << 20;
/// Most bytes of an item allocated ahead of reading them.
const READ_STEP: usize = 1 << 20;

/// What applying one command produced, returned to the client that proposed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Put,
    Delete {
        existed: bool,
    },
    /// The entry held no command (a leader's empty entry).
    Noop,
}

/// Which pairs one scan page may hold: keys with `prefix`, strictly after
/// `start_after`, at most `limit` of them and about `max_bytes` of keys and values
/// (always at least one pair, so a page larger than `max_bytes` still progresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRange {
    pub prefix: Vec<u8>,
    pub start_after: Vec<u8>,
    pub limit: usize,
    pub max_bytes: usize,
}

/// One page of a scan; `more` says pairs matching the range follow its last key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    pub items: Vec<KeyValue>,
    pub more: bool,
}

/// Cloning shares structure: O(1), and the clone is unaffected by later applies.
#[derive(Default, Debug, Clone)]
pub struct KvStateMachine {
    data: RedBlackTreeMapSync<Vec<u8>, Vec<u8>>,
}

impl KvStateMachine {
    pub fn apply(&mut self, cmd: LogCommand) -> Applied {
        match cmd.op {
            Some(Op::Put(p)) => {
                self.data.insert_mut(p.key, p.value);
                Applied::Put
            }
            Some(Op::Delete(d)) => Applied::Delete {
                existed: self.data.remove_mut(&d.key),
            },
            None => Applied::Noop,
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.data.get(key).map(Vec::as_slice)
    }

    /// The page of pairs `range` selects, in key order.
    pub fn scan(&self, range: &ScanRange) -> ScanPage {
        let from = if range.start_after.as_slice() >= range.prefix.as_slice() {
            Bound::Excluded(range.start_after.as_slice())
        } else {
            Bound::Included(range.prefix.as_slice())
        };
        let matching = self
            .data
            .range::<[u8], _>((from, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&range.prefix));
        let (mut items, mut bytes) = (Vec::new(), 0usize);
        for (k, v) in matching {
            let size = k.len() + v.len();
            let full =
                items.len() >= range.limit || (!items.is_empty() && bytes + size > range.max_bytes);
            if full {
                return ScanPage { items, more: true };
            }
            bytes += size;
            items.push(KeyValue {
                key: k.clone(),
                value: v.clone(),
            });
        }
        ScanPage { items, more: false }
    }

    pub fn len(&self) -> usize {
        self.data.size()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Writes every pair as `len key len value`, preceded by the count.
    pub fn dump(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&(self.data.size() as u64).to_le_bytes())?;
        for (k, v) in self.data.iter() {
            w.write_all(&(k.len() as u32).to_le_bytes())?;
            w.write_all(k)?;
            w.write_all(&(v.len() as u32).to_le_bytes())?;
            w.write_all(v)?;
        }
        Ok(())
    }

    /// Reads a body written by [`dump`](Self::dump).
    pub fn load(r: &mut impl Read) -> io::Result<Self> {
        let mut n = [0u8; 8];
        r.read_exact(&mut n)?;
        let count = u64::from_le_bytes(n);
        let mut data = RedBlackTreeMapSync::default();
        for _ in 0..count {
            let k = read_item(r)?;
            let v = read_item(r)?;
            data.insert_mut(k, v);
        }
        let mut rest = [0u8; 1];
        if r.read(&mut rest)? != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "snapshot body has bytes after its last pair",
            ));
        }
        Ok(KvStateMachine { data })
    }
}

fn read_item(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_ITEM_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot item of {len} bytes exceeds the {MAX_ITEM_LEN}-byte limit"),
        ));
    }
    // Memory follows the bytes actually read, a step at a time: a corrupt or
    // crafted length costs at most one step, not the 64 MiB it declares
    // (found by fuzzing: a 185-byte backup took 33 MiB to refuse).
    let len = len as usize;
    let mut buf = Vec::new();
    while buf.len() < len {
        let start = buf.len();
        let step = (len - start).min(READ_STEP);
        buf.reserve_exact(step);
        buf.resize(start + step, 0);
        r.read_exact(&mut buf[start..])?;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftlane_proto::kv::{DeleteRequest, PutRequest};

    fn put(k: &str, v: &str) -> LogCommand {
        LogCommand {
            op: Some(Op::Put(PutRequest {
                key: k.into(),
                value: v.into(),
            })),
        }
    }

    fn range(prefix: &str, start_after: &str, limit: usize, max_bytes: usize) -> ScanRange {
        ScanRange {
            prefix: prefix.into(),
            start_after: start_after.into(),
            limit,
            max_bytes,
        }
    }

    fn keys(page: &ScanPage) -> Vec<String> {
        page.items
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }

    fn machine(pairs: &[(&str, &str)]) -> KvStateMachine {
        let mut sm = KvStateMachine::default();
        for (k, v) in pairs {
            assert_eq!(sm.apply(put(k, v)), Applied::Put);
        }
        sm
    }

    #[test]
    fn apply_scan_and_snapshot_round_trip() {
        let mut sm = machine(&[("a/1", "x"), ("a/2", "y"), ("b/1", "z")]);
        let del = LogCommand {
            op: Some(Op::Delete(DeleteRequest { key: "a/2".into() })),
        };
        assert_eq!(sm.apply(del.clone()), Applied::Delete { existed: true });
        assert_eq!(sm.apply(del), Applied::Delete { existed: false });
        assert_eq!(keys(&sm.scan(&range("a/", "", 10, 1 << 20))), ["a/1"]);

        let mut body = Vec::new();
        sm.dump(&mut body).unwrap();
        let back = KvStateMachine::load(&mut body.as_slice()).unwrap();
        assert_eq!(back.get(b"b/1"), Some(&b"z"[..]));
        assert_eq!(back.len(), 2);

        body.push(0);
        assert!(KvStateMachine::load(&mut body.as_slice()).is_err());
    }

    /// Items are read a step at a time: one longer than a step still loads
    /// whole, and one cut short is an error, not a shorter value.
    #[test]
    fn items_longer_than_a_read_step_load_whole_and_cut_ones_fail() {
        let big = vec![7u8; 2 * READ_STEP + 3];
        let mut sm = KvStateMachine::default();
        sm.apply(LogCommand {
            op: Some(Op::Put(PutRequest {
                key: b"k".to_vec(),
                value: big.clone(),
            })),
        });
        let mut body = Vec::new();
        sm.dump(&mut body).unwrap();
        let back = KvStateMachine::load(&mut body.as_slice()).unwrap();
        assert_eq!(back.get(b"k"), Some(&big[..]));

        body.truncate(body.len() - 1);
        let e = KvStateMachine::load(&mut body.as_slice()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Snapshot files written before the map became persistent must stay loadable
    /// and be written the same way: these are the bytes the BTreeMap version wrote.
    #[test]
    fn dump_format_is_byte_identical_to_the_btreemap_layout() {
        let sm = machine(&[("b/22", "yz"), ("a/1", "x")]);
        let mut expected = 2u64.to_le_bytes().to_vec();
        for (k, v) in [("a/1", "x"), ("b/22", "yz")] {
            expected.extend((k.len() as u32).to_le_bytes());
            expected.extend(k.as_bytes());
            expected.extend((v.len() as u32).to_le_bytes());
            expected.extend(v.as_bytes());
        }
        let mut body = Vec::new();
        sm.dump(&mut body).unwrap();
        assert_eq!(body, expected);
        let back = KvStateMachine::load(&mut expected.as_slice()).unwrap();
        assert_eq!(back.get(b"a/1"), Some(&b"x"[..]));
        assert_eq!(back.get(b"b/22"), Some(&b"yz"[..]));
    }

    #[test]
    fn a_clone_shares_the_map_and_keeps_its_view_while_the_original_changes() {
        let mut sm = machine(&[("k/1", "old"), ("k/2", "two")]);
        let view = sm.clone();
        assert!(view.data.ptr_eq(&sm.data), "clone copied the map");
        let mut before = Vec::new();
        view.dump(&mut before).unwrap();

        sm.apply(put("k/1", "new"));
        sm.apply(put("k/3", "three"));
        sm.apply(LogCommand {
            op: Some(Op::Delete(DeleteRequest { key: "k/2".into() })),
        });

        let mut after = Vec::new();
        view.dump(&mut after).unwrap();
        assert_eq!(before, after, "the view changed under the dump");
        assert_eq!(view.get(b"k/1"), Some(&b"old"[..]));
        assert_eq!(view.len(), 2);
        assert_eq!(sm.get(b"k/1"), Some(&b"new"[..]));
        assert_eq!(sm.get(b"k/2"), None);
        assert_eq!(sm.len(), 2);
    }

    #[test]
    fn pages_that_follow_start_after_visit_every_matching_key_once() {
        let pairs: Vec<(String, String)> = (0..25)
            .map(|i| (format!("p/{i:02}"), format!("v{i}")))
            .chain([("o/x".into(), "o".into()), ("q/x".into(), "q".into())])
            .collect();
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        let sm = machine(&refs);
        let (mut seen, mut after, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let page = sm.scan(&range("p/", &after, 10, 1 << 20));
            pages += 1;
            seen.extend(keys(&page));
            if !page.more {
                break;
            }
            after = seen.last().unwrap().clone();
            assert!(pages < 10, "pagination does not end");
        }
        let expected: Vec<String> = (0..25).map(|i| format!("p/{i:02}")).collect();
        assert_eq!((seen, pages), (expected, 3));
    }

    #[test]
    fn a_page_stops_at_the_byte_cap_but_always_holds_one_pair() {
        let big = "v".repeat(100);
        let sm = machine(&[("a", &big), ("b", &big), ("c", &big)]);
        // Two pairs are 202 bytes: over a 150-byte cap only one fits.
        let page = sm.scan(&range("", "", 10, 150));
        assert_eq!((keys(&page), page.more), (vec!["a".to_string()], true));
        // A single pair larger than the cap is still returned, or paging would stall.
        let page = sm.scan(&range("", "a", 10, 10));
        assert_eq!((keys(&page), page.more), (vec!["b".to_string()], true));
        let page = sm.scan(&range("", "b", 10, 10));
        assert_eq!((keys(&page), page.more), (vec!["c".to_string()], false));
    }

    #[test]
    fn start_after_outside_the_prefix_starts_at_the_prefix_or_ends_the_scan() {
        let sm = machine(&[("a/1", ""), ("b/1", ""), ("b/2", ""), ("c/1", "")]);
        assert_eq!(
            keys(&sm.scan(&range("b/", "a/9", 10, 1 << 20))),
            ["b/1", "b/2"]
        );
        let page = sm.scan(&range("b/", "b/2", 10, 1 << 20));
        assert_eq!((page.items.len(), page.more), (0, false));
        let page = sm.scan(&range("b/", "zzz", 10, 1 << 20));
        assert_eq!((page.items.len(), page.more), (0, false));
    }
}
