//! The persistent worker channel (`/_worker/ws/{id}`) over a real socket:
//! who may open it, tasks pushed per credit, results and heartbeats answered
//! in it, cancellations pushed, and protocol breaches closing it with a
//! reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use orchestrator::api::{self, AppState, auth::Auth};
use orchestrator::engine::{Engine, EngineSettings};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const CLIENT: &str = "ctok";
const WORKER: &str = "w1";
const TOKEN: &str = "wtok";
const FLOW: &str = r#"
[states.start]
start = true
dispatch.task = "echo_task"
dispatch.on = { success = "completed" }
[states.completed]
end = "finished"
"#;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn server() -> (String, Engine) {
    let engine = common::engine_with(FLOW, EngineSettings::default()).await;
    let auth = Auth::new(
        HashMap::from([(CLIENT.to_string(), "default".to_string())]),
        Some(TOKEN.into()),
        HashMap::new(),
        true,
    );
    let app = api::router(AppState::new(
        engine.clone(),
        auth,
        64 << 10,
        api::throttle::AuthFailures::new(api::throttle::DEFAULT_LIMIT, Default::default()),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(api::serve(listener, app, std::future::pending()));
    (base, engine)
}

/// Opens the channel; `Err` is the HTTP status and body of the refusal.
async fn open(base: &str, token: &str, subprotocol: Option<&str>) -> Result<Socket, (u16, String)> {
    let mut request = format!("ws://{base}/_worker/ws/{WORKER}")
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("X-Worker-Token", token.parse().unwrap());
    if let Some(p) = subprotocol {
        headers.insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err((
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("{e}"),
    }
}

async fn send(socket: &mut Socket, frame: Value) {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

/// The next text frame (pings skipped).
async fn next(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("the channel is open")
            .unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The close frame the orchestrator ends the channel with.
async fn closed(socket: &mut Socket) -> (u16, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("closed within 10 s")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None => return (0, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("{e}"),
        }
    }
}

fn signed(mut body: Value) -> Value {
    body["nonce"] = json!(uuid::Uuid::new_v4().to_string());
    rxon::seal(&mut body, WORKER, TOKEN, chrono::Utc::now().timestamp());
    body
}

#[tokio::test]
async fn only_a_registered_worker_asking_for_the_subprotocol_opens_it() {
    let (base, engine) = server().await;
    let (status, body) = open(&base, "wrong", Some(rxon::channel::SUBPROTOCOL))
        .await
        .err()
        .unwrap();
    assert_eq!(status, 403, "{body}");
    let (status, body) = open(&base, TOKEN, Some(rxon::channel::SUBPROTOCOL))
        .await
        .err()
        .unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("Worker not found"), "{body}");
    common::register(&engine, WORKER, &["echo_task"]).await;
    // avtomatika's workers open the path without our subprotocol.
    let (status, body) = open(&base, TOKEN, None).await.err().unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(rxon::channel::SUBPROTOCOL), "{body}");
    let mut socket = open(&base, TOKEN, Some(rxon::channel::SUBPROTOCOL))
        .await
        .unwrap();
    let first = next(&mut socket).await;
    assert_eq!(first["type"], "plugins", "{first}");
}

#[tokio::test]
async fn tasks_come_one_per_credit_and_results_are_answered_in_the_channel() {
    let (base, engine) = server().await;
    common::register(&engine, WORKER, &["echo_task"]).await;
    let mut socket = open(&base, TOKEN, Some(rxon::channel::SUBPROTOCOL))
        .await
        .unwrap();
    assert_eq!(next(&mut socket).await["type"], "plugins");
    let first = common::create(&engine, json!({"n": 1})).await;
    let second = common::create(&engine, json!({"n": 2})).await;
    // No credit, no task.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), next(&mut socket))
            .await
            .is_err()
    );
    send(&mut socket, json!({"type": "ready", "slots": 1})).await;
    let pushed = next(&mut socket).await;
    assert_eq!(pushed["type"], "task", "{pushed}");
    let task = &pushed["task"];
    assert_eq!(task["job_id"], first.to_string());
    // One credit, one task: the second waits.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), next(&mut socket))
            .await
            .is_err()
    );
    let result = signed(json!({
        "job_id": task["job_id"], "task_id": task["task_id"], "worker_id": WORKER,
        "status": "success", "data": {"echo": 1}
    }));
    send(
        &mut socket,
        json!({"type": "result", "id": 7, "body": result.clone()}),
    )
    .await;
    let reply = next(&mut socket).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["id"], 7);
    assert_eq!(reply["status"], 200, "{reply}");
    assert_eq!(reply["body"]["status"], "accepted", "{reply}");
    assert_eq!(
        common::job(&engine, first).await.status.as_str(),
        "finished"
    );
    // The same signed result again: a replay, refused as over HTTP.
    send(
        &mut socket,
        json!({"type": "result", "id": 8, "body": result}),
    )
    .await;
    let reply = next(&mut socket).await;
    assert_eq!(reply["status"], 403, "{reply}");
    assert!(
        reply["body"]["error"].as_str().unwrap().contains("replay"),
        "{reply}"
    );
    // A heartbeat that lists a task the worker no longer holds is told to stop it.
    send(&mut socket, json!({"type": "ready", "slots": 1})).await;
    let pushed = next(&mut socket).await;
    assert_eq!(pushed["task"]["job_id"], second.to_string());
    let task_id = pushed["task"]["task_id"].as_str().unwrap().to_string();
    // The client cancels the job: the task's worker hears it at once.
    engine.cancel_job(second, "default").await.unwrap();
    let cancel = next(&mut socket).await;
    assert_eq!(cancel["type"], "cancel", "{cancel}");
    assert_eq!(cancel["task_id"], task_id);
    let heartbeat = signed(json!({
        "worker_id": WORKER, "status": "busy", "current_tasks": [task_id]
    }));
    send(
        &mut socket,
        json!({"type": "heartbeat", "id": 9, "body": heartbeat}),
    )
    .await;
    let reply = next(&mut socket).await;
    assert_eq!(reply["id"], 9);
    assert_eq!(reply["status"], 200, "{reply}");
    assert_eq!(reply["body"]["cancel_task_ids"], json!([task_id]));
}

#[tokio::test]
async fn protocol_breaches_close_the_channel_with_a_reason() {
    let (base, engine) = server().await;
    common::register(&engine, WORKER, &["echo_task"]).await;
    let cases = [
        (json!("not a frame").to_string(), "invalid frame"),
        (
            json!({"type": "ready", "slots": rxon::channel::MAX_CREDITS + 1}).to_string(),
            "task credits",
        ),
        ("{".to_string(), "invalid frame"),
    ];
    for (frame, reason) in cases {
        let mut socket = open(&base, TOKEN, Some(rxon::channel::SUBPROTOCOL))
            .await
            .unwrap();
        socket.send(Message::Text(frame.into())).await.unwrap();
        let (code, said) = closed(&mut socket).await;
        assert_eq!(code, rxon::channel::CLOSE_PROTOCOL, "{said}");
        assert!(said.contains(reason), "{said}");
    }
    // A frame above the body limit is refused before it is parsed.
    let mut socket = open(&base, TOKEN, Some(rxon::channel::SUBPROTOCOL))
        .await
        .unwrap();
    let big = json!({"type": "event", "id": 1, "body": {"pad": "x".repeat(100 << 10)}});
    let _ = socket.send(Message::Text(big.to_string().into())).await;
    let (code, _) = closed(&mut socket).await;
    assert_ne!(code, 1000);
    // A bad body is an error reply, not a closed channel.
    let mut socket = open(&base, TOKEN, Some(rxon::channel::SUBPROTOCOL))
        .await
        .unwrap();
    send(&mut socket, json!({"type": "result", "id": 3, "body": [1]})).await;
    let reply = loop {
        let frame = next(&mut socket).await;
        if frame["type"] == "reply" {
            break frame;
        }
    };
    assert_eq!(reply["status"], 400, "{reply}");
    // A newer channel of the same worker replaces this one.
    let mut newer = open(&base, TOKEN, Some(rxon::channel::SUBPROTOCOL))
        .await
        .unwrap();
    let (code, said) = closed(&mut socket).await;
    assert_eq!(code, rxon::channel::CLOSE_REPLACED, "{said}");
    assert_eq!(next(&mut newer).await["type"], "plugins");
}
