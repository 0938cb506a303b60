//! `SendSnapshot` framing: the first chunk carries the header (the MsgSnapshot
//! without data, the payload size and its CRC32C), then payload chunks, the final
//! one flagged `last`. Both ends stream from and to disk, so memory stays at a few
//! chunks whatever the snapshot size.

use std::path::PathBuf;
use std::time::Duration;

use futures::Stream;
use raftlane_proto::transport::raft_transport_client::RaftTransportClient;
use raftlane_proto::transport::{snapshot_chunk::Kind, SnapshotChunk, SnapshotHeader};
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tonic::{Code, Status};

/// Payload bytes per chunk.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Snapshot transfers may take this long at least, longer for big ones (at 1 MiB/s).
pub const MIN_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest snapshot a member accepts unless configured otherwise.
pub const DEFAULT_MAX_SNAPSHOT_BYTES: u64 = 8 << 30;
/// A receive that gets no chunk for this long is abandoned, unless configured otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long moving `size` bytes may take: at least `min`, and a second per MiB.
pub fn transfer_limit(min: Duration, size: u64) -> Duration {
    min.max(Duration::from_secs(size >> 20))
}

/// What a receiver accepts from one snapshot sender: a peer may not fill the
/// disk, nor hold a receive slot by sending slowly or not at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotLimits {
    /// Largest declared size, before the free space of the volume is considered.
    pub max_bytes: u64,
    /// Longest wait for the next chunk.
    pub idle: Duration,
    /// Least time a whole receive may take (see [`transfer_limit`]).
    pub min_total: Duration,
}

impl Default for SnapshotLimits {
    fn default() -> Self {
        SnapshotLimits {
            max_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
            idle: DEFAULT_IDLE_TIMEOUT,
            min_total: MIN_SNAPSHOT_TIMEOUT,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("snapshot of {size} bytes exceeds the limit of {limit} bytes (--max-snapshot-bytes)")]
    TooLarge { size: u64, limit: u64 },
    #[error("snapshot of {size} bytes exceeds the {free} bytes free on the data volume")]
    NoSpace { size: u64, free: u64 },
}

impl SnapshotLimits {
    /// Accepts a declared size only if it fits the limit and the `free` bytes.
    pub fn admit(&self, size: u64, free: u64) -> Result<(), SizeError> {
        if size > self.max_bytes {
            return Err(SizeError::TooLarge {
                size,
                limit: self.max_bytes,
            });
        }
        if size > free {
            return Err(SizeError::NoSpace { size, free });
        }
        Ok(())
    }

    /// How long receiving `size` bytes may take in all.
    pub fn total(&self, size: u64) -> Duration {
        transfer_limit(self.min_total, size)
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("payload chunk before the header")]
    PayloadBeforeHeader,
    #[error("second header in one snapshot")]
    SecondHeader,
    #[error("chunk after the last one")]
    AfterLast,
    #[error("chunk with neither header nor payload")]
    Empty,
    #[error("payload exceeds the announced {0} bytes")]
    TooLong(u64),
    #[error("payload is {got} bytes, header announced {want}")]
    SizeMismatch { got: u64, want: u64 },
    #[error("payload checksum {got:08x}, header announced {want:08x}")]
    Checksum { got: u32, want: u32 },
    #[error("stream ended before the last chunk")]
    Premature,
}

impl From<FrameError> for Status {
    fn from(e: FrameError) -> Status {
        let code = match e {
            FrameError::Checksum { .. } | FrameError::SizeMismatch { .. } => Code::DataLoss,
            _ => Code::InvalidArgument,
        };
        Status::new(code, format!("snapshot: {e}"))
    }
}

/// What one accepted chunk asks the receiver to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Header(SnapshotHeader),
    Payload(Vec<u8>),
}

/// Checks the chunk sequence of one snapshot, counting size and checksum.
#[derive(Default)]
pub struct Assembler {
    total: Option<(u64, u32)>,
    received: u64,
    crc: u32,
    complete: bool,
}

impl Assembler {
    /// Accepts the next chunk; on the `last` one also verifies size and checksum.
    /// A `last` header is returned and the payload is complete (it must be empty).
    pub fn accept(&mut self, chunk: SnapshotChunk) -> Result<Frame, FrameError> {
        if self.complete {
            return Err(FrameError::AfterLast);
        }
        let frame = match chunk.kind {
            Some(Kind::Header(h)) => {
                if self.total.is_some() {
                    return Err(FrameError::SecondHeader);
                }
                self.total = Some((h.total_size, h.crc32c));
                Frame::Header(h)
            }
            Some(Kind::Payload(p)) => {
                let (want, _) = self.total.ok_or(FrameError::PayloadBeforeHeader)?;
                self.received += p.len() as u64;
                if self.received > want {
                    return Err(FrameError::TooLong(want));
                }
                self.crc = crc32c::crc32c_append(self.crc, &p);
                Frame::Payload(p)
            }
            None => return Err(FrameError::Empty),
        };
        if chunk.last {
            let (want_len, want_crc) = self.total.ok_or(FrameError::PayloadBeforeHeader)?;
            if self.received != want_len {
                return Err(FrameError::SizeMismatch {
                    got: self.received,
                    want: want_len,
                });
            }
            if self.crc != want_crc {
                return Err(FrameError::Checksum {
                    got: self.crc,
                    want: want_crc,
                });
            }
            self.complete = true;
        }
        Ok(frame)
    }

    /// Accepts the first chunk of a stream (`None`: the stream ended), which
    /// must be the header.
    pub fn header(&mut self, first: Option<SnapshotChunk>) -> Result<SnapshotHeader, FrameError> {
        match self.accept(first.ok_or(FrameError::Premature)?)? {
            Frame::Header(h) => Ok(h),
            Frame::Payload(_) => Err(FrameError::PayloadBeforeHeader),
        }
    }

    /// Called at end of stream: the snapshot must have been completed.
    pub fn finish(&self) -> Result<u64, FrameError> {
        if self.complete {
            Ok(self.received)
        } else {
            Err(FrameError::Premature)
        }
    }
}

/// Size and CRC32C of a file, read once before sending so the header can carry them.
pub async fn measure(path: &PathBuf) -> std::io::Result<(u64, u32)> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; CHUNK_SIZE];
    let (mut len, mut crc) = (0u64, 0u32);
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok((len, crc));
        }
        len += n as u64;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
    }
}

/// The chunk stream of one snapshot file. A read error ends the stream without a
/// `last` chunk, which the receiver refuses, so the send fails rather than truncating.
pub fn chunks(
    header: SnapshotHeader,
    path: PathBuf,
    chunk_size: usize,
) -> impl Stream<Item = SnapshotChunk> + Send + 'static {
    struct State {
        header: Option<SnapshotHeader>,
        file: Option<tokio::fs::File>,
        path: PathBuf,
        remaining: u64,
        done: bool,
    }
    let remaining = header.total_size;
    let st = State {
        header: Some(header),
        file: None,
        path,
        remaining,
        done: false,
    };
    futures::stream::unfold(st, move |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(h) = st.header.take() {
            st.done = st.remaining == 0;
            let last = st.done;
            return Some((
                SnapshotChunk {
                    kind: Some(Kind::Header(h)),
                    last,
                },
                st,
            ));
        }
        if st.file.is_none() {
            match tokio::fs::File::open(&st.path).await {
                Ok(f) => st.file = Some(f),
                Err(e) => {
                    tracing::warn!(path = %st.path.display(), error = %e, "snapshot send: open failed");
                    return None;
                }
            }
        }
        let want = (st.remaining as usize).min(chunk_size);
        let mut buf = vec![0u8; want];
        let file = st.file.as_mut()?;
        if let Err(e) = file.read_exact(&mut buf).await {
            tracing::warn!(path = %st.path.display(), error = %e, "snapshot send: read failed");
            return None;
        }
        st.remaining -= want as u64;
        st.done = st.remaining == 0;
        let last = st.done;
        Some((
            SnapshotChunk {
                kind: Some(Kind::Payload(buf)),
                last,
            },
            st,
        ))
    })
}

/// Streams the snapshot file at `path` and waits for the receiver's ack, which
/// it sends only once raft has the snapshot. Returns the payload size.
pub async fn send_file(
    client: &mut RaftTransportClient<tonic::transport::Channel>,
    mut header: SnapshotHeader,
    path: PathBuf,
) -> Result<u64, String> {
    let (total_size, crc32c) = measure(&path)
        .await
        .map_err(|e| format!("snapshot file {}: {e}", path.display()))?;
    header.total_size = total_size;
    header.crc32c = crc32c;
    let limit = transfer_limit(MIN_SNAPSHOT_TIMEOUT, total_size);
    match tokio::time::timeout(
        limit,
        client.send_snapshot(chunks(header, path, CHUNK_SIZE)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(total_size),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err(format!("not acknowledged within {limit:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn header(total: u64, crc: u32) -> SnapshotChunk {
        SnapshotChunk {
            kind: Some(Kind::Header(SnapshotHeader {
                total_size: total,
                crc32c: crc,
                ..Default::default()
            })),
            last: total == 0,
        }
    }

    fn payload(p: &[u8], last: bool) -> SnapshotChunk {
        SnapshotChunk {
            kind: Some(Kind::Payload(p.to_vec())),
            last,
        }
    }

    #[test]
    fn accepts_well_formed_sequences() {
        let data = b"abcdefgh";
        let mut a = Assembler::default();
        a.accept(header(8, crc32c::crc32c(data))).unwrap();
        a.accept(payload(&data[..4], false)).unwrap();
        a.accept(payload(&data[4..], true)).unwrap();
        assert_eq!(a.finish(), Ok(8));

        // Empty payload: the header is also the last chunk.
        let mut a = Assembler::default();
        a.accept(header(0, 0)).unwrap();
        assert_eq!(a.finish(), Ok(0));
    }

    #[test]
    fn refuses_malformed_sequences() {
        let data = b"abcd";
        let crc = crc32c::crc32c(data);

        let mut a = Assembler::default();
        assert_eq!(
            a.accept(payload(data, true)),
            Err(FrameError::PayloadBeforeHeader)
        );
        let mut a = Assembler::default();
        assert_eq!(
            a.header(Some(payload(data, true))),
            Err(FrameError::PayloadBeforeHeader)
        );
        assert_eq!(
            Assembler::default().header(None),
            Err(FrameError::Premature)
        );

        let mut a = Assembler::default();
        a.accept(header(4, crc)).unwrap();
        assert_eq!(a.accept(header(4, crc)), Err(FrameError::SecondHeader));

        let mut a = Assembler::default();
        a.accept(header(4, crc)).unwrap();
        a.accept(payload(&data[..2], false)).unwrap();
        assert_eq!(a.finish(), Err(FrameError::Premature));

        let mut a = Assembler::default();
        a.accept(header(4, crc)).unwrap();
        assert_eq!(
            a.accept(payload(b"abcX", true)),
            Err(FrameError::Checksum {
                got: crc32c::crc32c(b"abcX"),
                want: crc
            })
        );

        let mut a = Assembler::default();
        a.accept(header(4, crc)).unwrap();
        assert_eq!(
            a.accept(payload(b"abcde", true)),
            Err(FrameError::TooLong(4))
        );

        let mut a = Assembler::default();
        a.accept(header(4, crc)).unwrap();
        a.accept(payload(data, true)).unwrap();
        assert_eq!(a.accept(payload(b"", true)), Err(FrameError::AfterLast));

        let s: Status = FrameError::Checksum { got: 1, want: 2 }.into();
        assert_eq!(s.code(), Code::DataLoss);
    }

    #[test]
    fn sizes_beyond_the_limit_or_the_free_space_are_refused() {
        let l = SnapshotLimits {
            max_bytes: 1000,
            ..SnapshotLimits::default()
        };
        assert_eq!(l.admit(1000, 1000), Ok(()));
        let e = l.admit(1001, u64::MAX).unwrap_err();
        assert_eq!(
            e.to_string(),
            "snapshot of 1001 bytes exceeds the limit of 1000 bytes (--max-snapshot-bytes)"
        );
        let e = l.admit(900, 899).unwrap_err();
        assert_eq!(
            e.to_string(),
            "snapshot of 900 bytes exceeds the 899 bytes free on the data volume"
        );
    }

    #[test]
    fn big_transfers_get_a_second_per_mib_beyond_the_minimum() {
        let l = SnapshotLimits::default();
        assert_eq!(l.total(0), Duration::from_secs(600));
        assert_eq!(l.total(600 << 20), Duration::from_secs(600));
        assert_eq!(l.total(8 << 30), Duration::from_secs(8192));
    }

    #[tokio::test]
    async fn chunks_split_at_exact_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..12u8).collect();
        std::fs::write(&path, &data).unwrap();
        let (len, crc) = measure(&path).await.unwrap();
        let h = SnapshotHeader {
            total_size: len,
            crc32c: crc,
            ..Default::default()
        };
        let got: Vec<_> = chunks(h, path, 4).collect().await;
        assert_eq!(got.len(), 4, "header + exactly three full chunks");
        let mut a = Assembler::default();
        for c in got {
            a.accept(c).unwrap();
        }
        assert_eq!(a.finish(), Ok(12));
    }
}
