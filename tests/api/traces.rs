//! OpenTelemetry traces: with `--otlp-endpoint`, both services export each
//! call's span to an OTLP/gRPC collector (here a real gRPC server on port 0
//! that keeps what it receives), and a caller's trace runs on through the
//! writer into the allocator.

use std::sync::{Arc, Mutex};

use numbering::{db::Backend, proto::invoice_writer_client::InvoiceWriterClient};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::helpers::{PATIENCE, TestDb, allocator_binary, invoice_request, start, writer_binary};

/// One exported span: its service, method, trace, own and parent ids.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    method: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

/// An OTLP trace collector that keeps every span it is sent.
#[derive(Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
    received: Arc<watch::Sender<usize>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(
                    |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(name) => Some(name.clone()),
                        _ => None,
                    },
                )
                .unwrap_or_default();
            for span in resource
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                let method = span
                    .attributes
                    .iter()
                    .find(|attribute| attribute.key == "method")
                    .and_then(
                        |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                            Value::StringValue(method) => Some(method.clone()),
                            _ => None,
                        },
                    )
                    .unwrap_or_default();
                spans.push(Exported {
                    service: service.clone(),
                    method,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                });
            }
        }
        // Told with the lock released: a waiter reads the spans while it
        // holds the channel's lock, so holding both here could deadlock.
        let count = spans.len();
        drop(spans);
        self.received.send_replace(count);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A caller's `CreateInvoice` with a W3C trace context: the writer's span of
/// it continues the caller's trace, and the allocator's spans of the writer's
/// `Reserve` and `Confirm` continue the writer's span, each exported by its
/// service under its own name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_trace_runs_through_the_writer_into_the_allocator() {
    let (received, mut watching) = watch::channel(0);
    let collector = Collector {
        spans: Arc::default(),
        received: Arc::new(received),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let traced = |mut command: tokio::process::Command| {
        // Spans sent every 100 ms, not every 5 s.
        command
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .args(["--otlp-endpoint", &endpoint]);
        command
    };
    let allocator_db = TestDb::create(Backend::Sqlite).await;
    let allocator = start(traced(allocator_binary(&allocator_db.url))).await;
    let writer_db = TestDb::create(Backend::Sqlite).await;
    let writer = start(traced(writer_binary(&writer_db.url, &allocator.url()))).await;
    let channel = writer.ready("numbering.v1.InvoiceWriter").await;

    let (trace_id, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut request = Request::new(invoice_request("acme"));
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(format!("00-{trace_id}-{caller_span}-01")).unwrap(),
    );
    InvoiceWriterClient::new(channel)
        .create_invoice(request)
        .await
        .unwrap();

    // The writer's call span, and the allocator's of Reserve and Confirm
    // (with the spans of their statements).
    let trace_id = hex::decode(trace_id).unwrap();
    let of_trace = |spans: &[Exported]| -> Vec<Exported> {
        spans
            .iter()
            .filter(|span| span.trace_id == trace_id)
            .cloned()
            .collect()
    };
    let calls = [
        "/numbering.v1.InvoiceWriter/CreateInvoice",
        "/numbering.v1.NumberAllocator/Reserve",
        "/numbering.v1.NumberAllocator/Confirm",
    ];
    let arrived = tokio::time::timeout(
        PATIENCE,
        watching.wait_for(|_| {
            let spans = of_trace(&collector.spans.lock().unwrap());
            calls
                .iter()
                .all(|call| spans.iter().any(|span| span.method == *call))
        }),
    )
    .await;
    let spans = of_trace(&collector.spans.lock().unwrap());
    assert!(
        arrived.is_ok(),
        "the trace's spans did not all arrive: {spans:#?}"
    );
    serving.abort();

    let writer_span = spans
        .iter()
        .find(|span| span.method == "/numbering.v1.InvoiceWriter/CreateInvoice")
        .unwrap_or_else(|| panic!("no CreateInvoice span: {spans:#?}"));
    assert_eq!(writer_span.service, "invoice-writer");
    assert_eq!(
        writer_span.parent_span_id,
        hex::decode(caller_span).unwrap()
    );
    for method in ["Reserve", "Confirm"] {
        let path = format!("/numbering.v1.NumberAllocator/{method}");
        let span = spans
            .iter()
            .find(|span| span.method == path)
            .unwrap_or_else(|| panic!("no {method} span in the trace: {spans:#?}"));
        assert_eq!(span.service, "number-allocator");
        assert_eq!(
            span.parent_span_id, writer_span.span_id,
            "{method} is not a child of the writer's call"
        );
    }
}
