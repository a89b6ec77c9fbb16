//! The quote page and its JavaScript client, served from files embedded
//! in the binary (`gateway/assets/`): plain HTML, CSS and ES modules with
//! no build step and nothing fetched from elsewhere, so the page works
//! offline and on any node.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// Only this node's own scripts, styles and WebSocket: the page loads
/// nothing from elsewhere, so a stricter policy costs it nothing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidate each time: a new gateway version serves new files.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", include_str!("../assets/index.html"))
}

pub async fn client_js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("../assets/client.js"))
}

pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("../assets/app.js"))
}

pub async fn style_css() -> Response {
    asset("text/css; charset=utf-8", include_str!("../assets/style.css"))
}
