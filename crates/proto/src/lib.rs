//! Generated gRPC types and clients/servers for `proto/`.

#![allow(missing_docs, clippy::all)]

/// `posthorn.router.*`
pub mod router {
    /// `posthorn.router.v1`
    pub mod v1 {
        tonic::include_proto!("posthorn.router.v1");
    }
}
