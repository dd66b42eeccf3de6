//! A file host on 127.0.0.1 (wiremock) serving plugin zips.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A wiremock server that serves files at chosen paths.
pub struct FileHost {
    server: MockServer,
    next_priority: AtomicU8,
}

impl FileHost {
    /// Starts a host on 127.0.0.1 with a random port.
    pub async fn start() -> Self {
        FileHost {
            server: MockServer::start().await,
            next_priority: AtomicU8::new(250),
        }
    }

    /// The base URL, e.g. `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        self.server.uri()
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.uri())
    }

    /// Serves `body` at `path` (200, `application/zip`); returns its URL.
    pub async fn serve(&self, path_: &str, body: Vec<u8>) -> String {
        self.respond(
            path_,
            ResponseTemplate::new(200).set_body_raw(body, "application/zip"),
        )
        .await
    }

    /// Answers `status` at `path`; returns its URL.
    pub async fn serve_status(&self, path_: &str, status: u16) -> String {
        self.respond(path_, ResponseTemplate::new(status).set_body_string("no"))
            .await
    }

    /// Serves `body` at `path` after `delay`; returns its URL.
    pub async fn serve_slow(&self, path_: &str, body: Vec<u8>, delay: Duration) -> String {
        self.respond(
            path_,
            ResponseTemplate::new(200)
                .set_body_raw(body, "application/zip")
                .set_delay(delay),
        )
        .await
    }

    /// Answers a redirect to `location` at `path`; returns its URL.
    pub async fn serve_redirect(&self, path_: &str, location: &str) -> String {
        self.respond(
            path_,
            ResponseTemplate::new(302).insert_header("Location", location),
        )
        .await
    }

    /// Mounts `template` at `path`; a later mount for the same path wins.
    async fn respond(&self, path_: &str, template: ResponseTemplate) -> String {
        let priority = self.next_priority.fetch_sub(1, Ordering::Relaxed).max(1);
        Mock::given(method("GET"))
            .and(path(path_))
            .respond_with(template)
            .with_priority(priority)
            .mount(&self.server)
            .await;
        self.url(path_)
    }

    /// How many requests reached `path`.
    pub async fn hits(&self, path_: &str) -> usize {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == path_)
            .count()
    }
}
