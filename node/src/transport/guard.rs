//! Checks untrusted bytes before raft-rs parses them. raft-rs decodes with
//! protobuf 2.28, which recurses without limit on nested groups
//! (RUSTSEC-2024-0437): crafted bytes could overflow the stack. eraftpb never
//! uses groups, so any group wire type is refused, in the top-level message, in
//! every nested message protobuf would parse (at most four levels, by the
//! schema), and in the data of configuration-change entries, which the raft loop
//! parses as `ConfChange` or `ConfChangeV2` when it applies them.

use std::ops::Range;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum GuardError {
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("group wire type at byte {0} (not used by raft messages)")]
    Group(usize),
    #[error("invalid wire type {1} at byte {0}")]
    WireType(usize, u8),
    #[error("field number 0 at byte {0}")]
    FieldZero(usize),
}

/// Message kinds whose nested fields protobuf parses as messages (field
/// numbers from raft-proto 0.7's eraftpb.proto).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Message,
    Entry,
    Snapshot,
    SnapshotMetadata,
    ConfState,
    ConfChange,
    ConfChangeV2,
    ConfChangeSingle,
}

/// `Entry.entry_type` (field 1) and `Entry.data` (field 4).
const ENTRY_TYPE: u64 = 1;
const ENTRY_DATA: u64 = 4;

impl Kind {
    /// The kind of a length-delimited field, if protobuf parses it as a message.
    fn nested(self, field: u64) -> Option<Kind> {
        match (self, field) {
            (Kind::Message, 7) => Some(Kind::Entry),
            (Kind::Message, 9) => Some(Kind::Snapshot),
            (Kind::Snapshot, 2) => Some(Kind::SnapshotMetadata),
            (Kind::SnapshotMetadata, 1) => Some(Kind::ConfState),
            (Kind::ConfChangeV2, 2) => Some(Kind::ConfChangeSingle),
            _ => None,
        }
    }

    /// What an entry's data is parsed as, by its `entry_type` value. protobuf
    /// reads an enum as the low 32 bits of the varint, so those are compared.
    fn of_entry_type(value: u64) -> Option<Kind> {
        match value as u32 {
            1 => Some(Kind::ConfChange),
            2 => Some(Kind::ConfChangeV2),
            _ => None,
        }
    }
}

/// Accepts bytes that protobuf 2.28 can parse as an `eraftpb.Message` without
/// unbounded recursion; field values are checked by the parse that follows.
/// Returns how many log entries the message carries, so the caller can bound
/// what parsing will allocate.
pub fn check_raft_message(bytes: &[u8]) -> Result<usize, GuardError> {
    let mut entries = 0;
    scan(bytes, 0, Kind::Message, &mut entries)?;
    Ok(entries)
}

fn scan(buf: &[u8], base: usize, kind: Kind, entries: &mut usize) -> Result<(), GuardError> {
    // Conf-change kinds named by any `entry_type` field: protobuf keeps the last
    // known value, wherever it appears, so every one seen is checked.
    let mut conf_kinds: Vec<Kind> = Vec::new();
    for field in fields(buf, base) {
        let (number, value) = field?;
        match value {
            Value::Bytes(r) => {
                if let Some(inner) = kind.nested(number) {
                    if inner == Kind::Entry {
                        *entries += 1;
                    }
                    scan(&buf[r.clone()], base + r.start, inner, entries)?;
                }
            }
            Value::Varint(v) if kind == Kind::Entry && number == ENTRY_TYPE => {
                if let Some(k) = Kind::of_entry_type(v) {
                    if !conf_kinds.contains(&k) {
                        conf_kinds.push(k);
                    }
                }
            }
            _ => {}
        }
    }
    if conf_kinds.is_empty() {
        return Ok(());
    }
    // Second pass: `entry_type` may come after `data` in the bytes.
    for field in fields(buf, base) {
        if let (ENTRY_DATA, Value::Bytes(r)) = field? {
            for k in &conf_kinds {
                scan(&buf[r.clone()], base + r.start, *k, entries)?;
            }
        }
    }
    Ok(())
}

enum Value {
    Varint(u64),
    Fixed,
    /// A length-delimited field: where its bytes are in the buffer.
    Bytes(Range<usize>),
}

/// The fields of one protobuf message, in wire order; errors name the byte
/// offset `base + position`, and end the iteration.
fn fields(buf: &[u8], base: usize) -> impl Iterator<Item = Result<(u64, Value), GuardError>> + '_ {
    let mut pos = 0;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || pos >= buf.len() {
            return None;
        }
        let r = next_field(buf, &mut pos, base);
        failed = r.is_err();
        Some(r)
    })
}

fn next_field(buf: &[u8], pos: &mut usize, base: usize) -> Result<(u64, Value), GuardError> {
    let at = base + *pos;
    let key = varint(buf, pos).ok_or(GuardError::Truncated(at))?;
    let number = key >> 3;
    if number == 0 {
        return Err(GuardError::FieldZero(at));
    }
    let value = match (key & 7) as u8 {
        0 => Value::Varint(varint(buf, pos).ok_or(GuardError::Truncated(at))?),
        1 => {
            *pos = advance(buf, *pos, 8).ok_or(GuardError::Truncated(at))?;
            Value::Fixed
        }
        5 => {
            *pos = advance(buf, *pos, 4).ok_or(GuardError::Truncated(at))?;
            Value::Fixed
        }
        2 => {
            let len = varint(buf, pos).ok_or(GuardError::Truncated(at))?;
            let len = usize::try_from(len).map_err(|_| GuardError::Truncated(at))?;
            let end = advance(buf, *pos, len).ok_or(GuardError::Truncated(at))?;
            let r = *pos..end;
            *pos = end;
            Value::Bytes(r)
        }
        3 | 4 => return Err(GuardError::Group(at)),
        w => return Err(GuardError::WireType(at, w)),
    };
    Ok((number, value))
}

fn advance(buf: &[u8], pos: usize, n: usize) -> Option<usize> {
    let end = pos.checked_add(n)?;
    (end <= buf.len()).then_some(end)
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message as _;
    use raft::prelude::{
        ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message,
        MessageType,
    };

    /// A crafted group, the nesting of the advisory (unknown field 20, start-group).
    const GROUP: [u8; 2] = [0xa3, 0x01];

    fn append(entries: Vec<Entry>) -> Vec<u8> {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.set_entries(entries.into());
        m.write_to_bytes().unwrap()
    }

    fn entry(t: EntryType, data: Vec<u8>) -> Entry {
        let mut e = Entry {
            index: 7,
            data: data.into(),
            ..Default::default()
        };
        e.set_entry_type(t);
        e
    }

    fn real_message() -> Vec<u8> {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        // Normal entry data is opaque to raft: group-looking bytes inside it are fine.
        m.mut_entries()
            .push(entry(EntryType::EntryNormal, vec![0x0b, 0x0b, 0x0b]));
        m.mut_snapshot().mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        m.write_to_bytes().unwrap()
    }

    #[test]
    fn accepts_real_messages_and_counts_their_entries() {
        assert_eq!(check_raft_message(&real_message()), Ok(1));
        assert_eq!(check_raft_message(&[]), Ok(0));

        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddLearnerNode);
        cc.node_id = 4;
        cc.context = GROUP.repeat(4).into(); // opaque bytes, never parsed
        let mut v2 = ConfChangeV2::default();
        v2.mut_changes().push(ConfChangeSingle {
            node_id: 4,
            ..Default::default()
        });
        v2.context = GROUP.repeat(4).into();
        let m = append(vec![
            entry(EntryType::EntryConfChange, cc.write_to_bytes().unwrap()),
            entry(EntryType::EntryConfChangeV2, v2.write_to_bytes().unwrap()),
            entry(EntryType::EntryNormal, GROUP.repeat(4)),
        ]);
        assert_eq!(check_raft_message(&m), Ok(3));
    }

    #[test]
    fn refuses_groups_at_any_parsed_depth() {
        let top = GROUP.repeat(10_000);
        assert!(matches!(
            check_raft_message(&top),
            Err(GuardError::Group(0))
        ));

        // A group hidden inside an Entry (field 7).
        let mut nested = vec![0x3a, 0x02, 0x0b, 0x0c];
        nested.extend(real_message());
        assert!(matches!(
            check_raft_message(&nested),
            Err(GuardError::Group(2))
        ));
    }

    #[test]
    fn refuses_groups_inside_conf_change_entry_data() {
        // ConfChange: the group right in the entry's data.
        let m = append(vec![entry(EntryType::EntryConfChange, GROUP.repeat(1000))]);
        assert!(matches!(check_raft_message(&m), Err(GuardError::Group(_))));

        // ConfChangeV2: the group inside a nested ConfChangeSingle (field 2).
        let mut data = vec![0x12, GROUP.len() as u8 * 2];
        data.extend(GROUP.repeat(2));
        let m = append(vec![entry(EntryType::EntryConfChangeV2, data)]);
        assert!(matches!(check_raft_message(&m), Err(GuardError::Group(_))));
    }

    #[test]
    fn an_entry_type_after_the_data_still_guards_the_data() {
        // Entry { data (4) = group bytes, then entry_type (1) = ConfChange }.
        let data = GROUP.repeat(50);
        let mut e = vec![0x22, data.len() as u8];
        e.extend(&data);
        e.extend([0x08, 0x01]);
        let mut m = vec![0x3a, e.len() as u8];
        m.extend(&e);
        assert!(matches!(check_raft_message(&m), Err(GuardError::Group(_))));
        // protobuf reads the enum from the low 32 bits: 2^32 + 2 is ConfChangeV2.
        let mut e = vec![0x22, data.len() as u8];
        e.extend(&data);
        e.extend([0x08, 0x82, 0x80, 0x80, 0x80, 0x10]);
        let mut m = vec![0x3a, e.len() as u8];
        m.extend(&e);
        assert!(matches!(check_raft_message(&m), Err(GuardError::Group(_))));
    }

    #[test]
    fn refuses_truncation_and_bad_wire_types() {
        let mut m = real_message();
        m.truncate(m.len() - 1);
        assert!(matches!(
            check_raft_message(&m),
            Err(GuardError::Truncated(_))
        ));
        assert!(matches!(
            check_raft_message(&[0x0e]),
            Err(GuardError::WireType(0, 6))
        ));
        assert!(matches!(
            check_raft_message(&[0x00, 0x00]),
            Err(GuardError::FieldZero(0))
        ));
        assert!(matches!(
            check_raft_message(&[0xff; 11]),
            Err(GuardError::Truncated(0))
        ));
    }
}
