//! Logging and tracing for every tier.
//!
//! [`init`] installs a `tracing` subscriber: human-readable logs on a
//! terminal, JSON lines otherwise (or as configured), filtered by `RUST_LOG`
//! or `telemetry.log_level`; and, when `telemetry.otlp_endpoint` is set, an
//! OpenTelemetry layer exporting spans over OTLP/gRPC. Keep the returned
//! [`Guard`] alive: dropping it flushes pending spans.

#![warn(missing_docs)]

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use posthorn_config::{LogFormat, TelemetryConfig};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes and shuts the trace exporter down when dropped.
pub struct Guard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Install the global subscriber for `service` (used as the OTel service
/// name). Calling it twice is harmless (the second call does nothing).
pub fn init(service: &str, cfg: &TelemetryConfig) -> Guard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match cfg.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let provider = if cfg.otlp_endpoint.is_empty() {
        None
    } else {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(cfg.otlp_endpoint.clone())
            .build()
        {
            Ok(exporter) => Some(
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name(service.to_string())
                            .build(),
                    )
                    .build(),
            ),
            Err(e) => {
                eprintln!(
                    "posthorn: OTLP exporter to {} not started: {e}",
                    cfg.otlp_endpoint
                );
                None
            }
        }
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("posthorn")));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let res = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    drop(res);
    Guard { provider }
}
