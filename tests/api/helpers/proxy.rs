//! A proxy between the writer and the allocator that forwards every call and
//! fails some replies after the allocator has answered (lost, failed, or
//! never sent), refuses some calls in its place, or holds them at a gate
//! until the test lets each through or refuses it.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use numbering::proto::{
    AdvanceCounterRequest, AdvanceCounterResponse, AllocateRequest, AllocateResponse,
    AuditSeriesRequest, AuditSeriesResponse, ConfigureSeriesRequest, ConfigureSeriesResponse,
    ConfirmRequest, ConfirmResponse, GetNumberRequest, GetNumberResponse, GetSeriesRequest,
    GetSeriesResponse, ListNumbersRequest, ListNumbersResponse, ListSeriesRequest,
    ListSeriesResponse, ReleaseRequest, ReleaseResponse, ReserveRequest, ReserveResponse,
    VoidRequest, VoidResponse,
    number_allocator_client::NumberAllocatorClient,
    number_allocator_server::{NumberAllocator, NumberAllocatorServer},
};
use tokio::{
    net::TcpListener,
    sync::{Mutex, Notify, mpsc, oneshot},
    task::JoinHandle,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, transport::Channel};

/// The calls whose replies a proxy may fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Allocate,
    Reserve,
    Confirm,
    AdvanceCounter,
}

/// What a proxy does to the calls of a [`Method`], and their replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every third is lost: UNAVAILABLE in its place.
    LoseEveryThird,
    /// The first of `Method` after the allocator answered is never sent:
    /// the caller waits, and [`AllocatorProxy::hung`] is notified.
    Hang(Method),
    /// Every call of `Method` is refused (`ABORTED`), never sent.
    Refuse(Method),
    /// Every call of `Method` is refused `PERMISSION_DENIED`, never sent, as
    /// an allocator that no longer grants the writer's token refuses it.
    Deny(Method),
    /// The first reply to `Method` after the allocator answered is
    /// `DEADLINE_EXCEEDED` in its place, as an allocator whose own
    /// `--request-timeout` ran out after its commit answers.
    TimeOutFirst(Method),
    /// As [`Fault::TimeOutFirst`], and every later call of `Method` is
    /// refused `PERMISSION_DENIED`, never sent, as an allocator whose grants
    /// changed between two tries of one call refuses the second.
    TimeOutFirstThenDeny(Method),
    /// Every reply to `Method` after the allocator answered is `INTERNAL`
    /// in its place, as a fault of the allocator's own after its commit.
    FailAfter(Method),
    /// Every call of `Method` waits at a gate before it is sent, until the
    /// test, handed it by [`AllocatorProxy::at_gate`], lets it through or
    /// refuses it (`ABORTED`).
    Gate(Method),
}

/// A call waiting at the gate of [`Fault::Gate`].
pub struct AtGate(oneshot::Sender<bool>);

impl AtGate {
    /// Sends the call on to the allocator.
    pub fn pass(self) {
        let _ = self.0.send(true);
    }

    /// Refuses the call (`ABORTED`), never sent.
    pub fn refuse(self) {
        let _ = self.0.send(false);
    }
}

/// Forwards every call to the allocator, failing replies as its fault says.
pub struct AllocatorProxy {
    allocator: NumberAllocatorClient<Channel>,
    fault: Fault,
    calls: AtomicUsize,
    lost: AtomicUsize,
    struck: AtomicBool,
    hung: Notify,
    arrived: mpsc::UnboundedSender<AtGate>,
    waiting: Mutex<mpsc::UnboundedReceiver<AtGate>>,
}

impl AllocatorProxy {
    pub fn new(allocator: NumberAllocatorClient<Channel>, fault: Fault) -> Arc<Self> {
        let (arrived, waiting) = mpsc::unbounded_channel();
        Arc::new(Self {
            allocator,
            fault,
            calls: AtomicUsize::new(0),
            lost: AtomicUsize::new(0),
            struck: AtomicBool::new(false),
            hung: Notify::new(),
            arrived,
            waiting: Mutex::new(waiting),
        })
    }

    /// Serves the proxy on port 0; its URL, and the task serving it.
    pub async fn serve(self: &Arc<Self>) -> (String, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let service = NumberAllocatorServer::from_arc(self.clone());
        let serving = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        (url, serving)
    }

    /// How many replies were lost or refused.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }

    /// Waits until a reply hangs.
    pub async fn hung(&self) {
        self.hung.notified().await;
    }

    /// The next call to arrive at the gate of [`Fault::Gate`], in the order
    /// they arrive.
    pub async fn at_gate(&self) -> AtGate {
        self.waiting.lock().await.recv().await.unwrap()
    }

    /// The allocator's answer to a call of `method`, as the fault says.
    async fn after<T>(&self, method: Method, answer: Response<T>) -> Result<Response<T>, Status> {
        match self.fault {
            Fault::LoseEveryThird => {
                if self.calls.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
                    self.lost.fetch_add(1, Ordering::SeqCst);
                    return Err(Status::unavailable("the reply was lost"));
                }
            }
            Fault::Hang(hanging)
                if hanging == method && !self.struck.swap(true, Ordering::SeqCst) =>
            {
                // Stored: notify_one wakes a waiter that comes later too.
                self.hung.notify_one();
                std::future::pending::<()>().await;
            }
            Fault::TimeOutFirst(timed_out) | Fault::TimeOutFirstThenDeny(timed_out)
                if timed_out == method && !self.struck.swap(true, Ordering::SeqCst) =>
            {
                self.lost.fetch_add(1, Ordering::SeqCst);
                return Err(Status::deadline_exceeded("the allocator's time ran out"));
            }
            Fault::FailAfter(failed) if failed == method => {
                self.lost.fetch_add(1, Ordering::SeqCst);
                return Err(Status::internal("failed after the commit"));
            }
            Fault::Hang(_)
            | Fault::FailAfter(_)
            | Fault::Refuse(_)
            | Fault::Deny(_)
            | Fault::TimeOutFirst(_)
            | Fault::TimeOutFirstThenDeny(_)
            | Fault::Gate(_) => {}
        }
        Ok(answer)
    }

    /// Refuses a call of `method` in the allocator's place, if the fault says.
    async fn instead(&self, method: Method) -> Result<(), Status> {
        match self.fault {
            Fault::Gate(gated) if gated == method => {
                let (open, opened) = oneshot::channel();
                self.arrived.send(AtGate(open)).unwrap();
                if opened.await.unwrap_or(false) {
                    Ok(())
                } else {
                    self.lost.fetch_add(1, Ordering::SeqCst);
                    Err(Status::aborted("refused at the gate"))
                }
            }
            Fault::Refuse(refused) if refused == method => {
                self.lost.fetch_add(1, Ordering::SeqCst);
                Err(Status::aborted("refused by the proxy"))
            }
            Fault::Deny(denied) if denied == method => {
                self.lost.fetch_add(1, Ordering::SeqCst);
                Err(Status::permission_denied("denied by the proxy"))
            }
            Fault::TimeOutFirstThenDeny(denied)
                if denied == method && self.struck.load(Ordering::SeqCst) =>
            {
                Err(Status::permission_denied("denied by the proxy"))
            }
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl NumberAllocator for AllocatorProxy {
    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        self.instead(Method::Allocate).await?;
        let answer = self
            .allocator
            .clone()
            .allocate(request.into_inner())
            .await?;
        self.after(Method::Allocate, answer).await
    }

    async fn get_series(
        &self,
        request: Request<GetSeriesRequest>,
    ) -> Result<Response<GetSeriesResponse>, Status> {
        self.allocator
            .clone()
            .get_series(request.into_inner())
            .await
    }

    async fn list_series(
        &self,
        request: Request<ListSeriesRequest>,
    ) -> Result<Response<ListSeriesResponse>, Status> {
        self.allocator
            .clone()
            .list_series(request.into_inner())
            .await
    }

    async fn advance_counter(
        &self,
        request: Request<AdvanceCounterRequest>,
    ) -> Result<Response<AdvanceCounterResponse>, Status> {
        self.instead(Method::AdvanceCounter).await?;
        self.allocator
            .clone()
            .advance_counter(request.into_inner())
            .await
    }

    async fn configure_series(
        &self,
        request: Request<ConfigureSeriesRequest>,
    ) -> Result<Response<ConfigureSeriesResponse>, Status> {
        self.allocator
            .clone()
            .configure_series(request.into_inner())
            .await
    }

    async fn audit_series(
        &self,
        request: Request<AuditSeriesRequest>,
    ) -> Result<Response<AuditSeriesResponse>, Status> {
        self.allocator
            .clone()
            .audit_series(request.into_inner())
            .await
    }

    async fn get_number(
        &self,
        request: Request<GetNumberRequest>,
    ) -> Result<Response<GetNumberResponse>, Status> {
        self.allocator
            .clone()
            .get_number(request.into_inner())
            .await
    }

    async fn list_numbers(
        &self,
        request: Request<ListNumbersRequest>,
    ) -> Result<Response<ListNumbersResponse>, Status> {
        self.allocator
            .clone()
            .list_numbers(request.into_inner())
            .await
    }

    async fn confirm(
        &self,
        request: Request<ConfirmRequest>,
    ) -> Result<Response<ConfirmResponse>, Status> {
        self.instead(Method::Confirm).await?;
        let answer = self.allocator.clone().confirm(request.into_inner()).await?;
        self.after(Method::Confirm, answer).await
    }

    async fn void(&self, request: Request<VoidRequest>) -> Result<Response<VoidResponse>, Status> {
        self.allocator.clone().void(request.into_inner()).await
    }

    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        self.instead(Method::Reserve).await?;
        let answer = self.allocator.clone().reserve(request.into_inner()).await?;
        self.after(Method::Reserve, answer).await
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        self.allocator.clone().release(request.into_inner()).await
    }
}
