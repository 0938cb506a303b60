//! The codec of every raftlane service: prost's, with the count of top-level
//! fields in a received message checked before prost decodes it.
//!
//! prost allocates per element of a repeated field: an envelope of 16 MiB
//! holding eight million empty `messages` would take about 200 MB of `Vec`s
//! before any check on the decoded value could refuse it. Counting fields is
//! one pass over the bytes, without allocating.

use std::marker::PhantomData;

use prost::bytes::Buf;
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstCodec;

/// Most top-level fields a received message may hold: an envelope carries at
/// most 65,536 raft messages (raft-node's `--max-batch-messages` bound), a
/// scan page 10,000 pairs; anything else a handful.
pub const MAX_FIELDS: usize = 1 << 17;

/// Prost's codec with [`MAX_FIELDS`] enforced on decode.
#[derive(Debug, Clone)]
pub struct BoundedCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        BoundedCodec {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder {
            inner: self.inner.decoder(),
            _pd: PhantomData,
        }
    }
}

/// Decodes with prost once the field count is known to be within bounds.
pub struct BoundedDecoder<U> {
    inner: tonic_prost::ProstDecoder<U>,
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // tonic hands over one message, contiguous in its buffer.
        if buf.chunk().len() == buf.remaining() {
            count_fields(buf.chunk(), MAX_FIELDS)?;
        }
        self.inner.decode(buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}

/// Walks the top-level fields of `bytes` (tags and lengths only), failing
/// past `max` or at a group; malformed bytes are left for prost to refuse.
pub fn count_fields(bytes: &[u8], max: usize) -> Result<usize, Status> {
    let mut buf = bytes;
    let mut n = 0;
    while !buf.is_empty() {
        let Ok(key) = prost::encoding::decode_varint(&mut buf) else {
            break;
        };
        n += 1;
        if n > max {
            return Err(Status::resource_exhausted(format!(
                "message refused: more than {max} fields"
            )));
        }
        let skip = match key & 7 {
            0 => match prost::encoding::decode_varint(&mut buf) {
                Ok(_) => 0,
                Err(_) => break,
            },
            1 => 8,
            2 => match prost::encoding::decode_varint(&mut buf) {
                Ok(len) => len as usize,
                Err(_) => break,
            },
            5 => 4,
            // Groups (3, 4): no raftlane message has one, and prost would
            // skip an unknown group and decode on past it, uncounted.
            3 | 4 => {
                return Err(Status::invalid_argument(
                    "message refused: group wire type (not used by raftlane messages)",
                ))
            }
            _ => break,
        };
        if skip > buf.len() {
            break;
        }
        buf.advance(skip);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `repeated bytes messages = 5` holding `n` empty messages.
    fn envelope_of_empties(n: usize) -> Vec<u8> {
        [0x2a, 0x00].repeat(n)
    }

    #[test]
    fn a_flood_of_empty_elements_is_refused_before_decoding() {
        assert_eq!(
            count_fields(&envelope_of_empties(1000), MAX_FIELDS).unwrap(),
            1000
        );
        let err = count_fields(&envelope_of_empties(MAX_FIELDS + 1), MAX_FIELDS).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    }

    #[test]
    fn every_wire_type_is_skipped_by_its_length() {
        // varint 150, fixed64, a 3-byte string, fixed32.
        let bytes = [
            0x08, 0x96, 0x01, 0x11, 1, 2, 3, 4, 5, 6, 7, 8, 0x1a, 3, b'a', b'b', b'c', 0x25, 1, 2,
            3, 4,
        ];
        assert_eq!(count_fields(&bytes, 10).unwrap(), 4);
        assert!(count_fields(&bytes, 3).is_err());
    }

    /// prost skips an unknown group and decodes what follows: a group in
    /// front of a flood must not end the count.
    #[test]
    fn a_group_is_refused_not_skipped() {
        let mut bytes = vec![0x33, 0x34]; // start and end group, field 6
        bytes.extend(envelope_of_empties(MAX_FIELDS + 1));
        let err = count_fields(&bytes, MAX_FIELDS).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
