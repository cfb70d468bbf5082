//! `ui` — the insights dashboard at `/`: one HTML page with its script and
//! styles embedded in the binary (no CDN, works offline).
//!
//! Owns: serving the page with headers that keep the token in the URL from
//! leaking (no referrer, no caching) and a content security policy that
//! allows nothing but the page itself and this server.
//!
//! Never: reads data itself: the page's script calls `POST /rpc` (catalogue
//! methods) and `GET /events`.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const HTML: &str = include_str!("ui/index.html");
const CSS: &str = include_str!("ui/app.css");
const JS: &str = include_str!("ui/app.js");

/// The page, with the styles and script inlined.
pub fn page() -> String {
    HTML.replace("/*STYLE*/", CSS).replace("/*SCRIPT*/", JS)
}

pub async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        page(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_inlines_its_assets_and_loads_nothing_from_elsewhere() {
        let p = super::page();
        assert!(!p.contains("/*STYLE*/") && !p.contains("/*SCRIPT*/"));
        for bad in [
            "src=\"http",
            "href=\"http",
            "url(http",
            "@import",
            "<script src",
            "<link ",
        ] {
            assert!(!p.contains(bad), "the page must not reference {bad}");
        }
    }
}
