//! `send` — OTLP over HTTP/protobuf (`POST /v1/traces`, `/v1/metrics`)
//! and over gRPC (the collector's `TraceService` / `MetricsService`).
//!
//! Owns: one HTTP client and one lazily connected gRPC channel per
//! collector URL, and the per-export timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`).
//! Never: retries (a failed export is logged and dropped: telemetry must
//! never hold a run's memory or time), or logs a header's value.

use crate::config::{Protocol, Target};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use std::collections::HashMap;
use std::sync::Mutex;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};

/// The exporter's connections.
pub struct Sender {
    http: Client<HttpConnector, Full<Bytes>>,
    grpc: Mutex<HashMap<String, Channel>>,
}

impl Default for Sender {
    fn default() -> Self {
        Sender {
            http: Client::builder(TokioExecutor::new()).build_http(),
            grpc: Mutex::new(HashMap::new()),
        }
    }
}

impl Sender {
    fn channel(&self, t: &Target) -> Result<Channel, String> {
        let mut m = self.grpc.lock().map_err(|_| "poisoned".to_string())?;
        if let Some(c) = m.get(&t.url) {
            return Ok(c.clone());
        }
        let c = Endpoint::from_shared(t.url.clone())
            .map_err(|e| format!("bad gRPC endpoint {}: {e}", t.url))?
            .connect_timeout(t.timeout)
            .timeout(t.timeout)
            .connect_lazy();
        if m.len() >= 16 {
            m.clear();
        }
        m.insert(t.url.clone(), c.clone());
        Ok(c)
    }

    fn grpc_request<T>(t: &Target, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        for (k, v) in &t.headers {
            let (Ok(k), Ok(v)) = (
                MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
                MetadataValue::try_from(v.as_str()),
            ) else {
                tracing::warn!("otel: header {k} is not a valid gRPC metadata entry; left out");
                continue;
            };
            req.metadata_mut().insert(k, v);
        }
        req
    }

    async fn post(&self, t: &Target, body: Vec<u8>) -> Result<(), String> {
        let mut req = http::Request::post(&t.url).header("content-type", "application/x-protobuf");
        for (k, v) in &t.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad request to {}: {e}", t.url))?;
        let resp = tokio::time::timeout(t.timeout, self.http.request(req))
            .await
            .map_err(|_| format!("{} did not answer within {:?}", t.url, t.timeout))?
            .map_err(|e| format!("{}: {e}", t.url))?;
        if !resp.status().is_success() {
            return Err(format!("{} answered {}", t.url, resp.status()));
        }
        Ok(())
    }

    /// Sends spans.
    pub async fn traces(&self, t: &Target, req: ExportTraceServiceRequest) -> Result<(), String> {
        match t.protocol {
            Protocol::HttpProtobuf => self.post(t, req.encode_to_vec()).await,
            Protocol::Grpc => {
                let mut c = TraceServiceClient::new(self.channel(t)?);
                tokio::time::timeout(t.timeout, c.export(Self::grpc_request(t, req)))
                    .await
                    .map_err(|_| format!("{} did not answer within {:?}", t.url, t.timeout))?
                    .map(|_| ())
                    .map_err(|e| format!("{}: {}", t.url, e.message()))
            }
        }
    }

    /// Sends metric points.
    pub async fn metrics(
        &self,
        t: &Target,
        req: ExportMetricsServiceRequest,
    ) -> Result<(), String> {
        match t.protocol {
            Protocol::HttpProtobuf => self.post(t, req.encode_to_vec()).await,
            Protocol::Grpc => {
                let mut c = MetricsServiceClient::new(self.channel(t)?);
                tokio::time::timeout(t.timeout, c.export(Self::grpc_request(t, req)))
                    .await
                    .map_err(|_| format!("{} did not answer within {:?}", t.url, t.timeout))?
                    .map(|_| ())
                    .map_err(|e| format!("{}: {}", t.url, e.message()))
            }
        }
    }
}
