//! The `posthorn.resolver.v1.ResolverService` gRPC service over a shared
//! [`Resolver`]. DNS outcomes are in the reply; only a bad name is an
//! error (INVALID_ARGUMENT).

use std::sync::Arc;

use posthorn_proto::resolver::v1 as pb;
use posthorn_proto::resolver::v1::resolver_service_server::ResolverService;
use tonic::{Request, Response, Status};

use crate::lookup::{InvalidName, Resolver};

/// The gRPC service; cheap to clone, all clones share one resolver and cache.
#[derive(Clone)]
pub struct Service {
    resolver: Arc<Resolver>,
}

impl Service {
    /// Serve lookups of `resolver`.
    pub fn new(resolver: Arc<Resolver>) -> Self {
        Service { resolver }
    }
}

fn reply<T>(r: Result<T, InvalidName>) -> Result<Response<T>, Status> {
    r.map(Response::new)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl ResolverService for Service {
    async fn lookup_mx(
        &self,
        req: Request<pb::LookupMxRequest>,
    ) -> Result<Response<pb::LookupMxResponse>, Status> {
        let req = req.into_inner();
        reply(
            self.resolver
                .lookup_mx(&req.domain, req.resolve_addresses)
                .await,
        )
    }

    async fn lookup_ip(
        &self,
        req: Request<pb::LookupIpRequest>,
    ) -> Result<Response<pb::LookupIpResponse>, Status> {
        reply(self.resolver.lookup_ip(&req.into_inner().host).await)
    }

    async fn lookup_txt(
        &self,
        req: Request<pb::LookupTxtRequest>,
    ) -> Result<Response<pb::LookupTxtResponse>, Status> {
        reply(self.resolver.lookup_txt(&req.into_inner().name).await)
    }

    async fn lookup_tlsa(
        &self,
        req: Request<pb::LookupTlsaRequest>,
    ) -> Result<Response<pb::LookupTlsaResponse>, Status> {
        reply(self.resolver.lookup_tlsa(&req.into_inner().name).await)
    }
}
