//! The web client: plain HTML, CSS and JavaScript from `server/web/`, embedded in the
//! binary at compile time, so a browser user needs nothing but the server's address.
//!
//! [`asset`] maps a request path to its content type and bytes; [`content_security_policy`]
//! builds the policy sent with every asset: only this origin's own files, and WebSocket
//! connections back to the host the page was loaded from.

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");
const FAVICON_SVG: &str = include_str!("../web/favicon.svg");

/// The static file served at `path` (without a query string): its content type and body.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let (content_type, body) = match path {
        "/" => ("text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "/style.css" => ("text/css; charset=utf-8", STYLE_CSS),
        "/favicon.svg" => ("image/svg+xml", FAVICON_SVG),
        _ => return None,
    };
    Some((content_type, body.as_bytes()))
}

/// The Content-Security-Policy for the web client. Scripts, styles and images come from
/// this origin only (no inline code, no CDN); `connect-src` allows this origin and the
/// WebSocket at the same host (`ws://` and `wss://`, spelled out for browsers where
/// `'self'` does not cover WebSocket schemes). `host` is the request's Host header; one
/// that is not a plain `host[:port]` is left out.
pub fn content_security_policy(host: Option<&str>) -> String {
    let mut connect = String::from("'self'");
    if let Some(host) = host.map(str::trim).filter(|h| is_plain_host(h)) {
        connect.push_str(&format!(" ws://{host} wss://{host}"));
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         media-src 'self' blob:; connect-src {connect}; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

/// `example.org`, `127.0.0.1:3000`, `[::1]:3000`: letters, digits and `.-:[]` only.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_type_and_a_body() {
        for path in ["/", "/app.js", "/style.css", "/favicon.svg"] {
            let (ct, body) = asset(path).unwrap_or_else(|| panic!("{path} missing"));
            assert!(!ct.is_empty() && !body.is_empty(), "{path}");
        }
        assert_eq!(asset("/").map(|a| a.0), Some("text/html; charset=utf-8"));
        assert!(asset("/index.htm").is_none());
        assert!(asset("/../Cargo.toml").is_none());
        assert!(asset("").is_none());
    }

    #[test]
    fn the_page_references_only_embedded_files() {
        let html = std::str::from_utf8(asset("/").map(|a| a.1).unwrap_or_default()).unwrap_or("");
        for needle in [
            "src=\"/app.js\"",
            "href=\"/style.css\"",
            "href=\"/favicon.svg\"",
        ] {
            assert!(html.contains(needle), "index.html lacks {needle}");
        }
        for remote in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
            assert!(!html.contains(remote), "no CDN or remote file: {remote}");
        }
        assert!(!STYLE_CSS.contains("url(http") && !STYLE_CSS.contains("@import"));
        assert!(
            !html.contains("<script>") && !html.contains("style=\""),
            "nothing inline (CSP)"
        );
    }

    #[test]
    fn csp_allows_the_websocket_of_the_same_host_only() {
        let csp = content_security_policy(Some("127.0.0.1:3000"));
        assert!(csp.contains("connect-src 'self' ws://127.0.0.1:3000 wss://127.0.0.1:3000;"));
        assert!(csp.contains("script-src 'self';"));
        assert!(csp.contains("default-src 'none';"));
        let odd = content_security_policy(Some("evil.org; script-src *"));
        assert!(odd.contains("connect-src 'self';"), "{odd}");
        assert!(!odd.contains("evil"), "{odd}");
        assert!(content_security_policy(None).contains("connect-src 'self';"));
        assert!(content_security_policy(Some("[::1]:8080")).contains("ws://[::1]:8080"));
    }
}
