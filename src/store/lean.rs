//! The two long-lived streaming RPCs every child holds open (Watch and
//! LeaseKeepAlive), served with small codec buffers.
//!
//! The server code generated for the etcd protocol encodes and decodes with
//! tonic's default buffers: 8 KiB each way per stream, allocated when the
//! stream opens and kept for its life. With two such streams per host that
//! was 32 KiB of the store's memory per host, most of it never used (a
//! watch request is a few dozen bytes, a keep-alive 10). [`Lean`] wraps a
//! generated server, answers those two methods itself with the same
//! handlers and a codec whose buffers start at [`BUFFER_BYTES`] and grow
//! only when a message needs it, and hands every other method to the
//! generated code unchanged.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use etcd_client::proto::{PbLeaseService, PbWatchService};
use tokio_stream::Stream;
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::{Grpc, NamedService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::{ProstDecoder, ProstEncoder};

use super::service::Service as Store;

/// Where a stream's encode and decode buffers start.
pub(crate) const BUFFER_BYTES: usize = 512;

/// tonic's default: responses are flushed once this much is encoded.
const YIELD_THRESHOLD: usize = 32 * 1024;

const WATCH: &str = "/etcdserverpb.Watch/Watch";
const KEEP_ALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";

/// Protobuf messages with small starting buffers.
struct SmallCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallCodec<T, U> {
    fn default() -> Self {
        SmallCodec(PhantomData)
    }
}

impl<T, U> Codec for SmallCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

/// A generated server with Watch and LeaseKeepAlive answered by
/// [`SmallCodec`]; everything else goes to `inner`.
#[derive(Clone)]
pub(crate) struct Lean<S> {
    inner: S,
    store: Store,
    /// The largest request accepted, as for the generated servers.
    limit: usize,
}

impl<S> Lean<S> {
    pub fn new(inner: S, store: Store, limit: usize) -> Self {
        Lean {
            inner,
            store,
            limit,
        }
    }
}

impl<S: NamedService> NamedService for Lean<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Lean<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let store = self.store.clone();
        let limit = self.limit;
        match req.uri().path() {
            WATCH => Box::pin(streaming(req, limit, move |r| {
                let store = store.clone();
                async move { PbWatchService::watch(&store, r).await }
            })),
            KEEP_ALIVE => Box::pin(streaming(req, limit, move |r| {
                let store = store.clone();
                async move { PbLeaseService::lease_keep_alive(&store, r).await }
            })),
            _ => Box::pin(self.inner.call(req)),
        }
    }
}

/// Serves one streaming call with `handler` and [`SmallCodec`].
async fn streaming<Req, Resp, St, F, Fut>(
    req: http::Request<Body>,
    limit: usize,
    handler: F,
) -> Result<http::Response<Body>, Infallible>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    St: Stream<Item = Result<Resp, Status>> + Send + 'static,
    F: FnMut(Request<Streaming<Req>>) -> Fut + Send,
    Fut: Future<Output = Result<Response<St>, Status>> + Send,
{
    let mut grpc = Grpc::new(SmallCodec::<Resp, Req>::default()).max_decoding_message_size(limit);
    Ok(grpc.streaming(tower::service_fn(handler), req).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::proto::{PbLeaseServer, PbWatchServer};

    #[test]
    fn the_paths_are_those_of_the_generated_servers() {
        let watch = <PbWatchServer<Store> as NamedService>::NAME;
        let lease = <PbLeaseServer<Store> as NamedService>::NAME;
        assert_eq!(WATCH, format!("/{watch}/Watch"));
        assert_eq!(KEEP_ALIVE, format!("/{lease}/LeaseKeepAlive"));
    }
}
