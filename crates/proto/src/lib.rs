//! Generated gRPC types and clients/servers for `proto/`.

#![allow(missing_docs, clippy::all)]

/// `posthorn.common.*`
pub mod common {
    /// `posthorn.common.v1`: the envelope on the queues.
    pub mod v1 {
        tonic::include_proto!("posthorn.common.v1");
    }
}

/// `posthorn.router.*`
pub mod router {
    /// `posthorn.router.v1`
    pub mod v1 {
        tonic::include_proto!("posthorn.router.v1");
    }
}

/// `posthorn.resolver.*`
pub mod resolver {
    /// `posthorn.resolver.v1`: cached DNS lookups for delivery.
    pub mod v1 {
        tonic::include_proto!("posthorn.resolver.v1");
    }
}

/// `posthorn.queue.*`
pub mod queue {
    /// `posthorn.queue.v1`: the delivery queue's admin API.
    pub mod v1 {
        tonic::include_proto!("posthorn.queue.v1");
    }
}

/// Ask a gRPC server's standard `grpc.health.v1` service whether `service`
/// (empty: the server as a whole) is SERVING, with a 2-second deadline.
pub async fn check_health(url: &str, service: &str) -> Result<(), String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("{url}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(2));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("{url}: cannot connect: {e}"))?;
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|e| format!("{url}: health check failed: {}", e.message()))?;
    if resp.get_ref().status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        Err(format!("{url}: {service} is not serving"))
    }
}
