//! Checks untrusted bytes before raft-rs parses them. raft-rs decodes with
//! protobuf 2.28, which recurses without limit on nested groups
//! (RUSTSEC-2024-0437): crafted bytes could overflow the stack. eraftpb never
//! uses groups, so any group wire type is refused, in the top-level message and in
//! every nested message protobuf would parse (at most four levels, by the schema).

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

/// Message kinds whose nested fields protobuf parses as messages.
#[derive(Clone, Copy)]
enum Kind {
    Message,
    Entry,
    Snapshot,
    SnapshotMetadata,
    ConfState,
}

impl Kind {
    /// The kind of a length-delimited field, if protobuf parses it as a message.
    fn nested(self, field: u64) -> Option<Kind> {
        match (self, field) {
            (Kind::Message, 7) => Some(Kind::Entry),
            (Kind::Message, 9) => Some(Kind::Snapshot),
            (Kind::Snapshot, 2) => Some(Kind::SnapshotMetadata),
            (Kind::SnapshotMetadata, 1) => Some(Kind::ConfState),
            _ => None,
        }
    }
}

/// Accepts bytes that protobuf 2.28 can parse as an `eraftpb.Message` without
/// unbounded recursion; field values are checked by the parse that follows.
pub fn check_raft_message(bytes: &[u8]) -> Result<(), GuardError> {
    scan(bytes, 0, Kind::Message)
}

fn scan(buf: &[u8], base: usize, kind: Kind) -> Result<(), GuardError> {
    let mut pos = 0;
    while pos < buf.len() {
        let at = base + pos;
        let key = varint(buf, &mut pos).ok_or(GuardError::Truncated(at))?;
        let field = key >> 3;
        if field == 0 {
            return Err(GuardError::FieldZero(at));
        }
        match (key & 7) as u8 {
            0 => {
                varint(buf, &mut pos).ok_or(GuardError::Truncated(at))?;
            }
            1 => pos = advance(buf, pos, 8).ok_or(GuardError::Truncated(at))?,
            5 => pos = advance(buf, pos, 4).ok_or(GuardError::Truncated(at))?,
            2 => {
                let len = varint(buf, &mut pos).ok_or(GuardError::Truncated(at))?;
                let len = usize::try_from(len).map_err(|_| GuardError::Truncated(at))?;
                let end = advance(buf, pos, len).ok_or(GuardError::Truncated(at))?;
                if let Some(inner) = kind.nested(field) {
                    scan(&buf[pos..end], base + pos, inner)?;
                }
                pos = end;
            }
            3 | 4 => return Err(GuardError::Group(at)),
            w => return Err(GuardError::WireType(at, w)),
        }
    }
    Ok(())
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
    use raft::prelude::{Entry, Message, MessageType};

    fn real_message() -> Vec<u8> {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        // Entry data is opaque: group-looking bytes inside it are fine.
        let e = Entry {
            index: 7,
            data: vec![0x0b, 0x0b, 0x0b].into(),
            ..Default::default()
        };
        m.mut_entries().push(e);
        m.mut_snapshot().mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        m.write_to_bytes().unwrap()
    }

    #[test]
    fn accepts_real_messages() {
        assert_eq!(check_raft_message(&real_message()), Ok(()));
        assert_eq!(check_raft_message(&[]), Ok(()));
    }

    #[test]
    fn refuses_groups_at_any_parsed_depth() {
        // Unknown field 20, start-group, repeated: the crafted nesting of the advisory.
        let top = [0xa3, 0x01].repeat(10_000);
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
