//! A loopback TCP proxy to the signaling server that can cut every connection it
//! carries at once (no WebSocket close frame: each side just sees its TCP connection
//! end), for the resume tests of the app and the web client.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A loopback TCP proxy to the server that can cut every connection it carries.
pub struct Proxy {
    pub port: u16,
    /// Cancelled to cut the connections of the current generation.
    generation: Arc<Mutex<CancellationToken>>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Proxy {
        Proxy::start_to(std::net::SocketAddr::from(([127, 0, 0, 1], upstream))).await
    }

    /// A proxy on 127.0.0.1 to any `upstream` address (e.g. the network lab's server, so
    /// a page inside a lab namespace is served from a secure-context loopback origin).
    pub async fn start_to(upstream: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let generation = Arc::clone(&generation);
            let accepted = Arc::clone(&accepted);
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    accepted.fetch_add(1, Relaxed);
                    let cut = generation.lock().unwrap().clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        // On a cut both sockets are dropped: each side sees its TCP
                        // connection end without a WebSocket close frame.
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut.cancelled() => {}
                        }
                    });
                }
            }
        });
        Proxy {
            port,
            generation,
            accepted,
            task,
        }
    }

    /// Drops every connection open now; later ones are carried again.
    pub fn cut(&self) {
        let mut g = self.generation.lock().unwrap();
        g.cancel();
        *g = CancellationToken::new();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.generation.lock().unwrap().cancel();
        self.task.abort();
    }
}

impl Proxy {
    /// How many connections it has accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Relaxed)
    }
}
