//! Where order requests come from and where their replies go: the
//! [`OrderDesk`] the order service serves.
//!
//! The service's desk is the Redis request stream with its consumer group
//! ([`crate::order_stream::StreamDesk`]), shared by every replica. The
//! one-command demo's desk is [`in_process`]: a bounded channel from the
//! gateway in the same process, and a callback that hands each reply back
//! to it. The order service itself ([`crate::order_service`]) is the same
//! code for both.

use std::sync::Arc;

use tokio::sync::mpsc;
use wire::orders::{OrderReply, OrderRequest};

use crate::backplane::{BoxFuture, WriteError};

/// Requests taken from the desk at most at once. A batch costs two round
/// trips (read; replies and acknowledgement), so the batch size bounds a
/// replica's rate: at 64, a loaded machine's 7 ms round trips capped one
/// replica near 4,500 requests/s while the stream's backlog grew
/// (bench/orders.md); 512 keeps the round trips off the critical path.
pub const BATCH: usize = 512;

/// One request to serve.
#[derive(Debug)]
pub struct Incoming {
    /// The order's id if it is accepted: derived from where the request
    /// came from, so serving the same request twice (after a failure)
    /// yields the same id, hence the same updates, written once.
    pub order_id: String,
    pub request: OrderRequest,
}

/// The reply to one request, for the gateway node that asked.
#[derive(Debug)]
pub struct Answer {
    pub node: String,
    pub reply: OrderReply,
}

pub trait OrderDesk: Send + 'static {
    /// The next requests, waiting until some arrive; `None` once the desk
    /// is closed. A desk that loses its source retries on its own, so
    /// callers only ever see requests or the end. Cancel-safe: a call
    /// dropped while waiting loses no request.
    fn next(&mut self) -> BoxFuture<'_, Option<Vec<Incoming>>>;

    /// Sends the replies to the batch `next` returned last, then marks it
    /// served (only then: a failed answer leaves the batch to be served
    /// again). `skipped` requests of that batch get no reply.
    fn answer(&mut self, answers: Vec<Answer>) -> BoxFuture<'_, Result<(), WriteError>>;
}

/// Hands a reply back to the gateway that asked, in this process.
pub type Deliver = Arc<dyn Fn(Answer) + Send + Sync>;

/// The sending end of an in-process desk, held by the gateway.
#[derive(Clone)]
pub struct RequestSender {
    tx: mpsc::Sender<OrderRequest>,
}

/// Why a request could not be handed to an in-process desk.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the order service has {0} requests waiting; try again")]
    Busy(usize),
    #[error("the order service is stopped")]
    Closed,
}

impl RequestSender {
    /// Queues a request without waiting: a full queue is refused at once,
    /// as a Redis stream that stopped answering would be.
    pub fn submit(&self, request: OrderRequest) -> Result<(), SubmitError> {
        self.tx.try_send(request).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::Busy(self.tx.max_capacity()),
            mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
        })
    }
}

/// A desk fed by a bounded channel in this process (the one-command demo).
pub struct InProcessDesk {
    rx: mpsc::Receiver<OrderRequest>,
    deliver: Deliver,
    /// Numbers the requests for their order ids.
    next_id: u64,
    /// Distinguishes this process's order ids from an earlier run's.
    epoch: u64,
}

/// An in-process desk of `capacity` waiting requests, whose replies go to
/// `deliver`; it closes when every sender is gone.
pub fn in_process(capacity: usize, deliver: Deliver) -> (RequestSender, InProcessDesk) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let desk = InProcessDesk { rx, deliver, next_id: 0, epoch: wire::now_ms() };
    (RequestSender { tx }, desk)
}

impl OrderDesk for InProcessDesk {
    fn next(&mut self) -> BoxFuture<'_, Option<Vec<Incoming>>> {
        Box::pin(async move {
            let mut requests = Vec::with_capacity(BATCH);
            if self.rx.recv_many(&mut requests, BATCH).await == 0 {
                return None;
            }
            Some(
                requests
                    .into_iter()
                    .map(|request| {
                        self.next_id += 1;
                        Incoming { order_id: format!("ord-{}-{}", self.epoch, self.next_id), request }
                    })
                    .collect(),
            )
        })
    }

    fn answer(&mut self, answers: Vec<Answer>) -> BoxFuture<'_, Result<(), WriteError>> {
        for answer in answers {
            (self.deliver)(answer);
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn request(corr: &str) -> OrderRequest {
        serde_json::from_str(&format!(r#"{{"corr":"{corr}","node":"n1","account":"a","order":{{}},"ts":1}}"#))
            .unwrap()
    }

    #[tokio::test]
    async fn in_process_desk_numbers_requests_and_delivers_answers() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&got);
        let deliver: Deliver = Arc::new(move |a: Answer| sink.lock().unwrap().push(a.reply.corr));
        let (tx, mut desk) = in_process(2, deliver);
        tx.submit(request("r1")).unwrap();
        tx.submit(request("r2")).unwrap();
        assert!(matches!(tx.submit(request("r3")), Err(SubmitError::Busy(2))), "bounded");
        let batch = desk.next().await.unwrap();
        assert_eq!(batch.len(), 2);
        assert_ne!(batch[0].order_id, batch[1].order_id);
        let answers = batch
            .into_iter()
            .map(|i| Answer {
                node: i.request.node,
                reply: OrderReply { corr: i.request.corr, data: None, error: None },
            })
            .collect();
        desk.answer(answers).await.unwrap();
        assert_eq!(*got.lock().unwrap(), ["r1", "r2"]);
        drop(tx);
        assert!(desk.next().await.is_none(), "closed with its last sender");
    }
}
