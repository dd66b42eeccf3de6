//! Benchmark baseline, not a product binary: the smallest `lambda_http`/hyper
//! service (answers `GET /ping`), built with the same profile as `plugin-api`
//! so that `cargo bench --bench perf` can compare their cold starts.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let app = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        return lambda_http::run(app).await;
    }
    let addr = std::env::var("KUIPER_LISTEN").unwrap_or_else(|_| "127.0.0.1:9081".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "hello-baseline listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}
