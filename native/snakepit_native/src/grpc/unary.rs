//! The lean path of the hot call, `ExecuteTool`, straight on an HTTP/2
//! connection of its own (the h2 crate), beside the tonic channel that
//! carries streams, pings and heartbeats.
//!
//! Through tonic a unary call passes a buffer task, hyper's dispatcher and a
//! body-pipe task, and its HEADERS and DATA frames leave in two writes, so
//! the Python worker wakes twice per request. Here the request's headers
//! and its one DATA frame are queued together before the connection task
//! flushes: one write, one wake-up of the worker, no extra tasks.

use std::sync::Mutex;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use prost::Message;
use snakepit_core::{auth, grpc_frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::{Code, Status};

use crate::wire::limits::max_message_bytes;
use crate::wire::pb::{ExecuteToolRequest, ExecuteToolResponse};

/// HTTP/2 receive windows of both connections to a worker (this one and
/// tonic's channel): large enough that a big reply is not paced by window
/// updates.
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

const URI: &str = "http://localhost/snakepit.bridge.BridgeService/ExecuteTool";

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A worker's address and, once dialled, the connection's request handle.
pub struct Unary {
    address: String,
    sender: Mutex<Option<SendRequest<Bytes>>>,
    /// Held while dialling, so concurrent first calls share one connection.
    dialling: tokio::sync::Mutex<()>,
}

fn h2_status(err: h2::Error) -> Status {
    if let Some(reason) = err.reason() {
        let code = match reason {
            h2::Reason::CANCEL => Code::Cancelled,
            h2::Reason::REFUSED_STREAM => Code::Unavailable,
            h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
            _ => Code::Internal,
        };
        return Status::new(code, format!("HTTP/2 error from the worker: {err}"));
    }
    Status::unavailable(format!("connection to the worker failed: {err}"))
}

impl Unary {
    pub fn new(address: String) -> Self {
        Unary {
            address,
            sender: Mutex::new(None),
            dialling: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self) -> Option<SendRequest<Bytes>> {
        self.sender.lock().ok().and_then(|s| s.clone())
    }

    fn forget(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            *sender = None;
        }
    }

    async fn dial(&self) -> Result<SendRequest<Bytes>, Status> {
        let _dialling = self.dialling.lock().await;
        if let Some(sender) = self.cached() {
            return Ok(sender);
        }
        let unavailable = |e: std::io::Error| {
            Status::unavailable(format!("cannot connect to {}: {e}", self.address))
        };
        let io: Box<dyn Io> = match self.address.strip_prefix("unix:") {
            Some(path) => Box::new(
                tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(unavailable)?,
            ),
            None => {
                let stream = tokio::net::TcpStream::connect(&self.address)
                    .await
                    .map_err(unavailable)?;
                stream.set_nodelay(true).map_err(unavailable)?;
                Box::new(stream)
            }
        };
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(h2_status)?;
        tokio::spawn(async move {
            // Ends when the worker goes away; the next call dials again.
            let _ = connection.await;
        });
        if let Ok(mut cached) = self.sender.lock() {
            *cached = Some(sender.clone());
        }
        Ok(sender)
    }

    /// A handle ready for one more stream. A connection that died before
    /// this call sent anything is replaced once: nothing was executed.
    async fn ready(&self) -> Result<SendRequest<Bytes>, Status> {
        if let Some(sender) = self.cached() {
            match sender.ready().await {
                Ok(ready) => return Ok(ready),
                Err(_) => self.forget(),
            }
        }
        self.dial().await?.ready().await.map_err(|e| {
            self.forget();
            h2_status(e)
        })
    }

    pub async fn execute(
        &self,
        req: ExecuteToolRequest,
        timeout: Option<Duration>,
    ) -> Result<ExecuteToolResponse, Status> {
        let mut sender = self.ready().await?;

        let len = req.encoded_len();
        let max = max_message_bytes();
        if len > max {
            return Err(Status::resource_exhausted(format!(
                "the request is {len} bytes, larger than max_message_bytes ({max})"
            )));
        }
        let mut body = BytesMut::with_capacity(5 + len);
        body.put_slice(&grpc_frame::prefix(len));
        req.encode(&mut body)
            .map_err(|e| Status::internal(format!("cannot encode the request: {e}")))?;

        let mut request = http::Request::post(http::Uri::from_static(URI))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header(auth::HEADER, auth::token());
        if let Some(t) = timeout {
            request = request.header("grpc-timeout", grpc_frame::timeout(t));
        }
        let request = request
            .body(())
            .map_err(|e| Status::internal(format!("cannot build the request: {e}")))?;

        let (response, mut send) = sender.send_request(request, false).map_err(h2_status)?;
        send.send_data(body.freeze(), true).map_err(h2_status)?;

        let (parts, mut recv) = response.await.map_err(h2_status)?.into_parts();
        // An error may come as headers alone ("trailers-only").
        if let Some(status) = Status::from_header_map(&parts.headers) {
            if status.code() != Code::Ok {
                return Err(status);
            }
        }
        if parts.status != http::StatusCode::OK {
            return Err(Status::unknown(format!(
                "the worker answered HTTP {}",
                parts.status
            )));
        }

        let mut data = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(h2_status)?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            if data.len() + chunk.len() > max + 5 {
                return Err(Status::resource_exhausted(format!(
                    "the worker's reply is larger than max_message_bytes ({max})"
                )));
            }
            data.extend_from_slice(&chunk);
        }
        let trailers = recv.trailers().await.map_err(h2_status)?;
        let status = trailers
            .as_ref()
            .and_then(Status::from_header_map)
            .or_else(|| Status::from_header_map(&parts.headers))
            .ok_or_else(|| Status::internal("the worker's reply has no grpc-status"))?;
        if status.code() != Code::Ok {
            return Err(status);
        }
        decode_message(&data)
    }
}

/// The reply's one message, decoded.
fn decode_message(data: &[u8]) -> Result<ExecuteToolResponse, Status> {
    let bad = |what: &str| Status::internal(format!("malformed reply from the worker: {what}"));
    let message = grpc_frame::message(data).map_err(|e| bad(&e))?;
    ExecuteToolResponse::decode(message).map_err(|e| bad(&e.to_string()))
}

#[cfg(test)]
mod tests {
    //! The reply framing of the lean path, on arbitrary, truncated and
    //! oversized bodies (see `test_shims.rs` on why this crate's tests link).
    use super::*;
    use proptest::prelude::*;

    const CASES: u32 = 512;

    fn body(msg: &[u8]) -> Vec<u8> {
        let mut body = grpc_frame::prefix(msg.len()).to_vec();
        body.extend_from_slice(msg);
        body
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        #[test]
        fn arbitrary_bodies_decode_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_message(&bytes);
            let _ = decode_message(&body(&bytes));
        }

        #[test]
        fn replies_read_back_and_cut_ones_are_refused(
            result in prop::collection::vec(any::<u8>(), 0..200),
            success in any::<bool>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let resp = ExecuteToolResponse { success, result_json: result, ..Default::default() };
            let body = body(&resp.encode_to_vec());
            prop_assert_eq!(decode_message(&body).unwrap(), resp);
            let cut = cut.index(body.len());
            prop_assert!(decode_message(&body[..cut]).is_err());
        }

        #[test]
        fn a_length_past_the_body_is_refused_without_allocating(len in (1u32 << 20).., rest in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = grpc_frame::prefix(len as usize).to_vec();
            bytes.extend_from_slice(&rest);
            prop_assert!(decode_message(&bytes).is_err());
        }
    }
}
