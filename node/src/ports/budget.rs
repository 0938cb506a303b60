//! A byte budget shared by every request stream of a port.
//!
//! tonic buffers a gRPC message until it is whole, up to the port's message
//! limit, on every stream at once: 64 streams each sending most of a 4 MiB
//! message and never finishing it held 256 MB. Here the bytes of messages not
//! yet whole are charged to one budget per port, whatever the number of
//! connections and streams, and given back when the message is whole (tonic
//! then decodes it and lets the buffer go). A stream whose next bytes do not
//! fit is ended with RESOURCE_EXHAUSTED and counted.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::codegen::http;
use tonic::codegen::Bytes;
use tonic::Status;

/// The gRPC length prefix: a compression flag and a 4-byte length.
const PREFIX: usize = 5;

/// One port's budget.
#[derive(Clone)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    total: usize,
    /// Bytes of unfinished messages held now.
    pub held: Gauge,
    /// Streams ended because the budget was spent.
    pub refused: Counter,
}

impl Budget {
    pub fn new(total: usize, held: Gauge, refused: Counter) -> Budget {
        Budget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
            held,
            refused,
        }
    }

    /// Wraps the body of every request.
    pub fn layer(&self) -> BudgetLayer {
        BudgetLayer(self.clone())
    }
}

/// The tower layer putting a port's requests on its budget.
#[derive(Clone)]
pub struct BudgetLayer(Budget);

impl<S> tower_layer::Layer<S> for BudgetLayer {
    type Service = BudgetService<S>;
    fn layer(&self, inner: S) -> BudgetService<S> {
        BudgetService {
            inner,
            budget: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct BudgetService<S> {
    inner: S,
    budget: Budget,
}

impl<S> tonic::codegen::Service<http::Request<tonic::body::Body>> for BudgetService<S>
where
    S: tonic::codegen::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let budget = self.budget.clone();
        self.inner
            .call(req.map(|body| tonic::body::Body::new(Budgeted::new(body, budget))))
    }
}

/// A request body whose unfinished message bytes are charged to the budget.
pub struct Budgeted<B> {
    inner: B,
    budget: Budget,
    /// Charged for the message under way.
    permit: Option<OwnedSemaphorePermit>,
    /// Bytes of the length prefix seen so far, and the prefix.
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// Bytes of the message body still to come.
    remaining: usize,
}

impl<B> Budgeted<B> {
    pub fn new(inner: B, budget: Budget) -> Budgeted<B> {
        Budgeted {
            inner,
            budget,
            permit: None,
            prefix: [0; PREFIX],
            prefix_len: 0,
            remaining: 0,
        }
    }

    /// Charges `n` more bytes of the message under way.
    fn charge(&mut self, n: usize) -> Result<(), Status> {
        let spent = || {
            Status::resource_exhausted(format!(
                "this port's {} bytes for unfinished messages are in use; retry",
                self.budget.total
            ))
        };
        let n32 = u32::try_from(n).map_err(|_| spent())?;
        let more = self
            .budget
            .bytes
            .clone()
            .try_acquire_many_owned(n32)
            .map_err(|_| spent())?;
        self.budget.held.inc_by(n as i64);
        match &mut self.permit {
            Some(p) => p.merge(more),
            None => self.permit = Some(more),
        }
        Ok(())
    }

    /// The message under way is whole: its bytes go back to the budget.
    fn finish(&mut self) {
        if let Some(p) = self.permit.take() {
            self.budget.held.dec_by(p.num_permits() as i64);
        }
    }

    /// Follows the message framing through `data`, charging what belongs to
    /// unfinished messages. On refusal the stream's charge is given back
    /// (the stream ends).
    fn account(&mut self, data: &[u8]) -> Result<(), Status> {
        let r = self.follow(data);
        if r.is_err() {
            self.budget.refused.inc();
            self.finish();
        }
        r
    }

    fn follow(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining == 0 {
                let take = (PREFIX - self.prefix_len).min(data.len());
                self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
                self.prefix_len += take;
                data = &data[take..];
                self.charge(take)?;
                if self.prefix_len < PREFIX {
                    return Ok(());
                }
                self.prefix_len = 0;
                let len = u32::from_be_bytes(self.prefix[1..].try_into().expect("4 bytes"));
                self.remaining = len as usize;
                if self.remaining == 0 {
                    self.finish();
                }
                continue;
            }
            let take = self.remaining.min(data.len());
            self.charge(take)?;
            self.remaining -= take;
            data = &data[take..];
            if self.remaining == 0 {
                self.finish();
            }
        }
        Ok(())
    }
}

impl<B> Drop for Budgeted<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B> Body for Budgeted<B>
where
    B: Body<Data = Bytes, Error = Status> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let me = self.get_mut();
        let frame = match Pin::new(&mut me.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => f,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            if let Err(e) = me.account(data) {
                return Poll::Ready(Some(Err(e)));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(total: usize) -> Budget {
        Budget::new(total, Gauge::default(), Counter::default())
    }

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    #[test]
    fn whole_messages_give_their_bytes_back_whatever_the_split() {
        let b = budget(100);
        let mut s = Budgeted::new((), b.clone());
        let two: Vec<u8> = [message(60), message(0), message(30)].concat();
        for chunk in two.chunks(7) {
            s.account(chunk).unwrap();
        }
        assert_eq!(b.held.get(), 0);
        assert_eq!(b.bytes.available_permits(), 100);
    }

    #[test]
    fn unfinished_messages_of_all_streams_share_one_budget() {
        let b = budget(100);
        let mut first = Budgeted::new((), b.clone());
        let mut second = Budgeted::new((), b.clone());
        first.account(&message(80)[..60]).unwrap();
        assert_eq!(b.held.get(), 60);
        let err = second.account(&message(80)[..60]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert_eq!((b.held.get(), b.refused.get()), (60, 1));
        // The first finishes: its bytes are free again for the second.
        first.account(&message(80)[60..]).unwrap();
        assert_eq!(b.held.get(), 0);
        let mut third = Budgeted::new((), b.clone());
        third.account(&message(80)[..60]).unwrap();
        drop(third);
        assert_eq!(b.held.get(), 0);
        assert_eq!(b.bytes.available_permits(), 100);
    }
}
