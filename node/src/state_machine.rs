//! The replicated state: an ordered key-value map, changed only by committed
//! log commands, dumped to and loaded from snapshot bodies as a stream.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use raftlane_proto::kv::{log_command::Op, KeyValue, LogCommand};

/// Largest key or value a snapshot body may declare; guards loads of corrupt bodies.
const MAX_ITEM_LEN: u32 = 64 << 20;

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

#[derive(Default, Debug, Clone)]
pub struct KvStateMachine {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl KvStateMachine {
    pub fn apply(&mut self, cmd: LogCommand) -> Applied {
        match cmd.op {
            Some(Op::Put(p)) => {
                self.data.insert(p.key, p.value);
                Applied::Put
            }
            Some(Op::Delete(d)) => Applied::Delete {
                existed: self.data.remove(&d.key).is_some(),
            },
            None => Applied::Noop,
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.data.get(key).map(Vec::as_slice)
    }

    /// Keys starting with `prefix` in order; `limit` 0 means all.
    pub fn scan(&self, prefix: &[u8], limit: usize) -> Vec<KeyValue> {
        let limit = if limit == 0 { usize::MAX } else { limit };
        self.data
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Writes every pair as `len key len value`, preceded by the count.
    pub fn dump(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&(self.data.len() as u64).to_le_bytes())?;
        for (k, v) in &self.data {
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
        let mut data = BTreeMap::new();
        for _ in 0..count {
            let k = read_item(r)?;
            let v = read_item(r)?;
            data.insert(k, v);
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
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
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

    #[test]
    fn apply_scan_and_snapshot_round_trip() {
        let mut sm = KvStateMachine::default();
        for (k, v) in [("a/1", "x"), ("a/2", "y"), ("b/1", "z")] {
            assert_eq!(sm.apply(put(k, v)), Applied::Put);
        }
        let del = LogCommand {
            op: Some(Op::Delete(DeleteRequest { key: "a/2".into() })),
        };
        assert_eq!(sm.apply(del.clone()), Applied::Delete { existed: true });
        assert_eq!(sm.apply(del), Applied::Delete { existed: false });
        assert_eq!(sm.scan(b"a/", 0).len(), 1);
        assert_eq!(sm.scan(b"", 2).len(), 2);

        let mut body = Vec::new();
        sm.dump(&mut body).unwrap();
        let back = KvStateMachine::load(&mut body.as_slice()).unwrap();
        assert_eq!(back.get(b"b/1"), Some(&b"z"[..]));
        assert_eq!(back.len(), 2);

        body.push(0);
        assert!(KvStateMachine::load(&mut body.as_slice()).is_err());
    }
}
