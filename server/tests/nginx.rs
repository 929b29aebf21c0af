//! The shipped nginx site (`deploy/nginx/peer-stream.conf`) under Debian's real nginx, in
//! front of a real server with `--trust-proxy`: `wss://` through TLS termination, the
//! HTTP -> HTTPS redirect, `/healthz` and `/metrics` over HTTPS, and per-address limits
//! and bans applied to each client's own address (clients connect from 127.0.0.2,
//! 127.0.0.3, ...; the server only ever sees nginx's 127.0.0.1 on the socket).
//!
//! The site file is read from `deploy/` and only its ports, certificate paths, upstream
//! and ACME webroot are swapped for the test's, so what ships is what is tested.
//! Without nginx the tests skip with a message, and fail under `CI=true`
//! (`scripts/deps.sh --test` installs it).
// nginx as a test fixture is a Linux (Debian) affair; the Windows check skips the file.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use common::*;
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const SHIPPED_SITE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/nginx/peer-stream.conf"
);

/// Debian installs nginx in /usr/sbin, which a non-root PATH may lack.
fn nginx_binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    if let Some(found) = dirs.iter().map(|d| d.join("nginx")).find(|p| p.is_file()) {
        return Some(found);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("nginx is not installed; scripts/deps.sh --test installs it (Debian `nginx`)");
    }
    eprintln!("SKIPPED: nginx is not installed (apt-get install nginx, or scripts/deps.sh --test)");
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// Replaces `from`, which must occur exactly once in the shipped file.
fn swap(conf: &mut String, from: &str, to: &str) {
    let n = conf.matches(from).count();
    assert_eq!(
        n,
        1,
        "deploy/nginx/peer-stream.conf should contain `{}` exactly once (found {n}); \
         server/tests/nginx.rs derives its config from those lines",
        from.trim()
    );
    *conf = conf.replacen(from, to, 1);
}

/// The shipped site with the test's ports, certificate, upstream and webroot.
fn test_site(
    upstream: SocketAddr,
    https: u16,
    http: u16,
    cert: &Path,
    key: &Path,
    webroot: &Path,
) -> String {
    let mut conf = std::fs::read_to_string(SHIPPED_SITE)
        .unwrap_or_else(|e| panic!("read {SHIPPED_SITE}: {e}"));
    swap(
        &mut conf,
        "    listen 443 ssl http2;\n",
        &format!("    listen 127.0.0.1:{https} ssl http2;\n"),
    );
    swap(&mut conf, "    listen [::]:443 ssl http2;\n", "");
    swap(
        &mut conf,
        "    listen 80;\n",
        &format!("    listen 127.0.0.1:{http};\n"),
    );
    swap(&mut conf, "    listen [::]:80;\n", "");
    swap(
        &mut conf,
        "ssl_certificate     /etc/letsencrypt/live/chat.example.org/fullchain.pem;",
        &format!("ssl_certificate     {};", cert.display()),
    );
    swap(
        &mut conf,
        "ssl_certificate_key /etc/letsencrypt/live/chat.example.org/privkey.pem;",
        &format!("ssl_certificate_key {};", key.display()),
    );
    swap(
        &mut conf,
        "    server 127.0.0.1:3000;\n",
        &format!("    server {upstream};\n"),
    );
    swap(
        &mut conf,
        "root /var/www/html;",
        &format!("root {};", webroot.display()),
    );
    conf
}

/// nginx running the shipped site; killed by PID when dropped (also on panic).
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    https: SocketAddr,
    http: SocketAddr,
    tls: TlsConnector,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // One process (master_process off): killing it leaves nothing behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Starts nginx in front of `upstream`, or `None` (skip) when nginx is not installed.
    async fn start(upstream: SocketAddr) -> Option<Nginx> {
        let bin = nginx_binary()?;
        // The free ports are picked before nginx binds them: on the rare clash with
        // another test, try again with new ones.
        for attempt in 1.. {
            match Self::launch(&bin, upstream).await {
                Ok(nginx) => return Some(nginx),
                Err(log) if attempt < 3 && log.contains("Address already in use") => {}
                Err(log) => panic!(
                    "nginx did not start:
{log}"
                ),
            }
        }
        None
    }

    async fn launch(bin: &Path, upstream: SocketAddr) -> Result<Nginx, String> {
        let dir = tempfile::tempdir().expect("temp dir for nginx");
        let p = dir.path();
        // nginx may drop privileges for some work; let it into its own prefix.
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod the nginx prefix");
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a throwaway certificate");
        let (cert, key) = (p.join("cert.pem"), p.join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).expect("write cert");
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
        let webroot = p.join("acme");
        std::fs::create_dir_all(webroot.join(".well-known/acme-challenge")).expect("webroot");
        std::fs::write(
            webroot.join(".well-known/acme-challenge/token-123"),
            "token-123.proof",
        )
        .expect("challenge file");
        let (https, http) = (free_port(), free_port());
        let site = p.join("peer-stream.conf");
        std::fs::write(
            &site,
            test_site(upstream, https, http, &cert, &key, &webroot),
        )
        .expect("write site");
        let d = p.display();
        // The main file Debian's /etc/nginx/nginx.conf would be, reduced to what the test
        // needs: everything under the temp prefix, one process, the site included as-is.
        let main = format!(
            "master_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  access_log {d}/access.log;\n\
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n  include {d}/peer-stream.conf;\n}}\n"
        );
        let main_path = p.join("nginx.conf");
        std::fs::write(&main_path, main).expect("write nginx.conf");
        let stderr = std::fs::File::create(p.join("stderr.log")).expect("stderr log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&main_path)
            .arg("-p")
            .arg(p)
            .arg("-e")
            .arg(p.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut roots = RootCertStore::empty();
        roots
            .add(certified.cert.der().clone())
            .expect("trust the test cert");
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut nginx = Nginx {
            child,
            dir,
            https: SocketAddr::from((LOCALHOST, https)),
            http: SocketAddr::from((LOCALHOST, http)),
            tls: TlsConnector::from(Arc::new(tls)),
        };
        nginx.wait_ready().await?;
        Ok(nginx)
    }

    /// Waits until both ports answer; `Err` with the logs if nginx exited instead.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "nginx exited at start ({status}):\n{}\n{}",
                    self.log("stderr.log"),
                    self.log("error.log")
                ));
            }
            let https = TcpStream::connect(self.https).await.is_ok();
            let http = TcpStream::connect(self.http).await.is_ok();
            if https && http {
                return Ok(());
            }
            if Instant::now() > deadline {
                panic!(
                    "nginx did not listen within 15 s:\n{}",
                    self.log("error.log")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn tls_from(&self, ip: [u8; 4]) -> TlsStream<TcpStream> {
        let tcp = tcp_from(self.https, ip, None).await;
        tokio::time::timeout(
            RECV_TIMEOUT,
            self.tls
                .connect(ServerName::try_from("localhost").expect("name"), tcp),
        )
        .await
        .expect("TLS handshake with nginx timed out")
        .unwrap_or_else(|e| panic!("TLS handshake with nginx failed: {e}"))
    }

    /// A `wss://localhost/ws` connection from loopback address `ip`, optionally carrying
    /// an X-Forwarded-For header of the client's own making (a forgery attempt).
    async fn wss_from(
        &self,
        ip: [u8; 4],
        forged_xff: Option<&str>,
    ) -> TestClient<TlsStream<TcpStream>> {
        let tls = self.tls_from(ip).await;
        let mut request = "wss://localhost/ws".into_client_request().expect("request");
        if let Some(v) = forged_xff {
            request
                .headers_mut()
                .insert("X-Forwarded-For", HeaderValue::from_str(v).expect("header"));
        }
        let (ws, _) =
            tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::client_async(request, tls))
                .await
                .expect("WebSocket handshake through nginx timed out")
                .unwrap_or_else(|e| {
                    panic!(
                        "WebSocket handshake through nginx failed: {e}\n{}",
                        self.log("error.log")
                    )
                });
        TestClient::from_ws(ws, &format!("wss@{}", std::net::Ipv4Addr::from(ip)))
    }

    /// `GET path` over HTTPS (through nginx), read to the end.
    async fn https_get(&self, path: &str) -> HttpResponse {
        let mut tls = self.tls_from(LOCALHOST).await;
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).await.expect("write request");
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(RECV_TIMEOUT, tls.read_to_end(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("GET {path} over https did not end"));
        parse_http_response(path, &buf)
    }

    /// `GET path` over plain HTTP to the port-80 server, with `Host: localhost`.
    async fn http_get(&self, path: &str) -> HttpResponse {
        let mut tcp = tcp_from(self.http, LOCALHOST, None).await;
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.expect("write request");
        let mut buf = Vec::new();
        tokio::time::timeout(RECV_TIMEOUT, tcp.read_to_end(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("GET {path} over http did not end"))
            .expect("read");
        parse_http_response(path, &buf)
    }
}

fn proxied_config() -> peer_stream_server::Config {
    let mut cfg = test_config();
    cfg.trust_proxy = true;
    cfg
}

#[tokio::test]
async fn wss_https_redirect_and_health_through_nginx() {
    let server = spawn_server(proxied_config()).await;
    let Some(nginx) = Nginx::start(server.addr).await else {
        return;
    };

    // hello/welcome, a match and a chat line, all through TLS termination + upgrade.
    let mut a = nginx.wss_from([127, 0, 0, 2], None).await.label("a");
    a.hello().await;
    let mut b = nginx.wss_from([127, 0, 0, 3], None).await.label("b");
    b.hello().await;
    let m = pair_up(&mut a, &mut b, &[]).await;
    a.chat(&m.match_id, "through nginx").await;
    let got = b.expect_type("chat").await;
    assert_eq!(got["text"], "through nginx", "{got}");
    b.chat(&m.match_id, "and back").await;
    assert_eq!(a.expect_type("chat").await["text"], "and back");

    // Liveness and metrics over HTTPS.
    let health = nginx.https_get("/healthz").await;
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.body, "ok\n", "{health:?}");
    assert!(
        health
            .head
            .to_ascii_lowercase()
            .contains("strict-transport-security"),
        "HSTS header missing: {health:?}"
    );
    let metrics = nginx.https_get("/metrics").await;
    assert_eq!(metrics.status, 200, "{metrics:?}");
    assert_eq!(
        metric_sum(&metrics.body, "peer_stream_connections"),
        Some(2.0),
        "{}",
        metrics.body
    );
    assert_eq!(
        metric_sum(&metrics.body, "peer_stream_active_matches"),
        Some(1.0),
        "{}",
        metrics.body
    );
    // The web client's page.
    let page = nginx.https_get("/").await;
    assert_eq!(page.status, 200, "{}", page.head);
    assert!(
        page.body.contains("<html"),
        "not the web client: {}",
        page.body
    );

    // Port 80: ACME challenges are served, everything else is redirected to HTTPS.
    let redirect = nginx.http_get("/ws?x=1").await;
    assert_eq!(redirect.status, 301, "{redirect:?}");
    assert!(
        redirect
            .head
            .lines()
            .any(|l| l.eq_ignore_ascii_case("location: https://localhost/ws?x=1")),
        "{redirect:?}"
    );
    let challenge = nginx
        .http_get("/.well-known/acme-challenge/token-123")
        .await;
    assert_eq!(challenge.status, 200, "{challenge:?}");
    assert_eq!(challenge.body, "token-123.proof");

    a.close().await;
    b.close().await;
    drop(nginx);
    server.stop().await;
}

#[tokio::test]
async fn bans_apply_to_the_real_client_address_behind_nginx() {
    let mut cfg = proxied_config();
    cfg.ban_threshold = 1;
    let server = spawn_server(cfg).await;
    let Some(nginx) = Nginx::start(server.addr).await else {
        return;
    };
    // x (127.0.0.2) claims to be 127.0.0.9 in its own X-Forwarded-For; nginx appends
    // 127.0.0.2 and the server must take that, not the forgery.
    let mut x = nginx
        .wss_from([127, 0, 0, 2], Some("127.0.0.9"))
        .await
        .label("x");
    x.hello().await;
    let mut r = nginx.wss_from([127, 0, 0, 3], None).await.label("reporter");
    r.hello().await;
    let m = pair_up(&mut x, &mut r, &[]).await;
    r.report(&m.match_id, "abuse").await;

    // One report is the threshold: x is banned and thrown out at once.
    let closed = x.recv_until_close(RECV_TIMEOUT).await;
    assert!(closed.has_error("banned"), "{closed:?}");
    assert_eq!(closed.close_code, Some(1008), "{closed:?}");
    r.expect_partner_left(&m.match_id, "disconnected").await;

    // A new connection from 127.0.0.2 is refused (even claiming another address)...
    for forged in [None, Some("127.0.0.4")] {
        let mut again = nginx
            .wss_from([127, 0, 0, 2], forged)
            .await
            .label("x-again");
        let closed = again.recv_until_close(RECV_TIMEOUT).await;
        assert!(
            closed.has_error("banned"),
            "127.0.0.2 (X-Forwarded-For {forged:?}) should be banned: {closed:?}"
        );
    }
    // ...while the reporter's address, nginx's own address and the address x forged are
    // not banned: the ban hit the client's real address and nothing else.
    for ip in [[127, 0, 0, 3], [127, 0, 0, 1], [127, 0, 0, 9]] {
        let mut ok = nginx.wss_from(ip, None).await;
        ok.hello().await;
        ok.close().await;
    }
    r.close().await;
    drop(nginx);
    server.stop().await;
}

#[tokio::test]
async fn per_address_cap_counts_real_clients_not_nginx() {
    let mut cfg = proxied_config();
    cfg.max_conns_per_ip = 2;
    let server = spawn_server(cfg).await;
    let Some(nginx) = Nginx::start(server.addr).await else {
        return;
    };
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut c = nginx.wss_from([127, 0, 0, 2], None).await;
        c.hello().await;
        kept.push(c);
    }
    // The third from 127.0.0.2 is over the cap, forged header or not.
    let mut third = nginx
        .wss_from([127, 0, 0, 2], Some("127.0.0.7"))
        .await
        .label("third");
    let closed = third.recv_until_close(RECV_TIMEOUT).await;
    assert!(closed.has_error("rate_limited"), "{closed:?}");
    assert_eq!(closed.close_code, Some(1008), "{closed:?}");
    // Others behind the same nginx are counted on their own: two more from 127.0.0.3.
    for _ in 0..2 {
        let mut c = nginx.wss_from([127, 0, 0, 3], None).await;
        c.hello().await;
        kept.push(c);
    }
    assert_eq!(kept.len(), 4);
    for c in kept {
        c.close().await;
    }
    drop(nginx);
    server.stop().await;
}
