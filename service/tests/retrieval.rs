//! Retrieval from an upstream API, served by the test itself on loopback: the allow-list,
//! refusals of other hosts, schemes and the metadata address, same-host redirects only, and
//! conditional GETs that store a new raw object only when the content changed.

mod common;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use common::Stack;
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Upstream {
    /// If-None-Match values seen, to prove the conditional GET was sent.
    conditional: Arc<Mutex<Vec<String>>>,
    body: Arc<Mutex<(String, String)>>,
}

async fn data(State(upstream): State<Upstream>, headers: HeaderMap) -> Response {
    let (etag, body) = upstream.body.lock().unwrap().clone();
    if let Some(seen) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        upstream.conditional.lock().unwrap().push(seen.to_string());
        if seen == etag {
            return StatusCode::NOT_MODIFIED.into_response();
        }
    }
    ([(header::ETAG, etag)], body).into_response()
}

async fn start_upstream() -> (String, Upstream) {
    let upstream = Upstream::default();
    *upstream.body.lock().unwrap() = ("\"v1\"".into(), "{\"version\":1}\n".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route("/feed/data.jsonl", get(data))
        .route(
            "/same-host-redirect",
            get(|| async { Redirect::temporary("/feed/data.jsonl") }),
        )
        .route(
            "/other-host-redirect",
            get(move || async move {
                Redirect::temporary(&format!("http://localhost:{port}/feed/data.jsonl"))
            }),
        )
        .route(
            "/metadata-redirect",
            get(|| async { Redirect::temporary("http://169.254.169.254/latest/meta-data/") }),
        )
        .with_state(upstream.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("127.0.0.1:{port}"), upstream)
}

async fn retrieve(stack: &Stack, body: Value) -> (u16, Value) {
    let response = stack
        .http
        .post(format!("{}/v1/retrievals", stack.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn retrieves_from_allowed_hosts_only() {
    let (host, _) = start_upstream().await;
    let stack = Stack::start(&[
        &format!("--upstream-allowed-hosts={host}"),
        "--processor=jsonl",
    ])
    .await;

    let (code, body) = retrieve(
        &stack,
        json!({"url": format!("http://{host}/feed/data.jsonl")}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["name"], "data.jsonl");
    assert_eq!(body["sse"], "aws:kms");
    let status = stack.settle("data.jsonl").await;
    assert_eq!(status["state"], "processed", "{status}");
    assert_eq!(status["processed"]["lines"], 1);
    assert_eq!(stack.get("data.jsonl").await.1, b"{\"version\":1}\n");

    let (code, body) = retrieve(
        &stack,
        json!({"url": format!("http://{host}/same-host-redirect"), "name": "via-redirect.jsonl"}),
    )
    .await;
    assert_eq!(code, 201, "same-host redirects are followed: {body}");

    for (url, why) in [
        (
            format!("http://{host}/other-host-redirect"),
            "redirect to another host",
        ),
        (
            format!("http://{host}/metadata-redirect"),
            "redirect to the metadata service",
        ),
        ("http://localhost:1/x".to_string(), "host not allowed"),
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "metadata service",
        ),
        ("file:///etc/passwd".to_string(), "scheme"),
        (format!("ftp://{host}/x"), "scheme"),
    ] {
        let (code, body) = retrieve(&stack, json!({"url": url, "name": "refused.bin"})).await;
        assert_eq!(code, 403, "{why}: {body}");
        assert_eq!(body["error"]["code"], "retrieval_refused", "{why}");
    }
    let keys = stack.keys(&stack.initial).await;
    assert_eq!(
        keys,
        vec![
            "raw/data.jsonl".to_string(),
            "raw/via-redirect.jsonl".to_string()
        ]
    );
}

#[tokio::test]
async fn scheduled_polls_store_only_changed_content() {
    let (host, upstream) = start_upstream().await;
    let url = format!("http://{host}/feed/data.jsonl");
    let stack = Stack::start(&[&format!("--upstream-allowed-hosts={host}")]).await;
    let versions = |stack: &Stack| {
        let s3 = stack.clients.s3.clone();
        let bucket = stack.initial.clone();
        async move {
            s3.list_object_versions()
                .bucket(bucket)
                .prefix("raw/data.jsonl")
                .send()
                .await
                .unwrap()
                .versions()
                .len()
        }
    };

    assert!(
        service::http::poll_once(&stack.state, &url).await.unwrap(),
        "first poll stores"
    );
    assert!(
        !service::http::poll_once(&stack.state, &url).await.unwrap(),
        "unchanged: 304, nothing stored"
    );
    assert_eq!(upstream.conditional.lock().unwrap().as_slice(), ["\"v1\""]);
    assert_eq!(versions(&stack).await, 1);

    *upstream.body.lock().unwrap() = ("\"v2\"".into(), "{\"version\":2}\n".into());
    assert!(
        service::http::poll_once(&stack.state, &url).await.unwrap(),
        "changed content is stored"
    );
    assert_eq!(versions(&stack).await, 2);
    let status = stack.settle("data.jsonl").await;
    assert_eq!(status["state"], "processed");
    assert_eq!(stack.get("data.jsonl").await.1, b"{\"version\":2}\n");
}
