//! A callback target on 127.0.0.1 (wiremock) that records what it receives.
//!
//! Like the reference fixture: `/callback` answers 200, `/callbackE` answers
//! 500, `/status/{code}` answers `code`, anything else 404.

use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// A recording callback server.
pub struct CallbackSink {
    server: MockServer,
}

impl CallbackSink {
    /// Starts the sink with its fixed routes.
    pub async fn start() -> Self {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/callback"))
            .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/callbackE"))
            .respond_with(ResponseTemplate::new(500).set_body_string("error"))
            .mount(&server)
            .await;
        for code in [200u16, 201, 204, 301, 400, 403, 404, 500, 502, 503] {
            Mock::given(method("GET"))
                .and(path_regex(format!("^/status/{code}$")))
                .respond_with(ResponseTemplate::new(code))
                .mount(&server)
                .await;
        }
        CallbackSink { server }
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path_: &str) -> String {
        format!("{}{path_}", self.server.uri())
    }

    /// Every request received so far.
    pub async fn received(&self) -> Vec<Request> {
        self.server.received_requests().await.unwrap_or_default()
    }

    /// How many requests reached `path`, with their methods.
    pub async fn calls(&self, path_: &str) -> Vec<String> {
        self.received()
            .await
            .iter()
            .filter(|r| r.url.path() == path_)
            .map(|r| r.method.to_string())
            .collect()
    }
}
