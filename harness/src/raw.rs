//! A TCP host on 127.0.0.1 that answers every request with exact bytes, for
//! what a well-behaved HTTP library will not send: bodies shorter or longer
//! than their `Content-Length`, connections that stall or reset. It counts
//! the connections it accepts, so a test can tell that nobody connected.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the raw host does after reading the request head.
#[derive(Debug, Clone)]
pub enum RawReply {
    /// Write these bytes, then close.
    Bytes(Vec<u8>),
    /// Write these bytes, then keep the connection open without writing more.
    BytesThenStall(Vec<u8>),
    /// Close at once (the client sees a reset or an empty reply).
    Close,
}

/// A host that answers every connection with one [`RawReply`].
pub struct RawHost {
    base: String,
    port: u16,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RawHost {
    /// Starts the host.
    pub async fn start(reply: RawReply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw host");
        let addr = listener.local_addr().expect("addr");
        let base = format!("http://{addr}");
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    match reply {
                        RawReply::Bytes(b) => {
                            let _ = sock.write_all(&b).await;
                            let _ = sock.shutdown().await;
                        }
                        RawReply::BytesThenStall(b) => {
                            let _ = sock.write_all(&b).await;
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        RawReply::Close => {}
                    }
                });
            }
        });
        RawHost {
            base,
            port: addr.port(),
            connections,
            task,
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many connections it has accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The URL of `path` on this host.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An HTTP/1.1 200 response head announcing `content_length`, followed by `body`.
    pub fn response(content_length: usize, body: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nContent-Length: {content_length}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }
}

impl Drop for RawHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}
