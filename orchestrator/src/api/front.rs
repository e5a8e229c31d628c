//! Every request's first and last stop, in one middleware (each layer of
//! `from_fn` costs a boxed future and a clone of the route's service per
//! request): credentials checked before the body is read
//! ([`super::guard`]), wrong ones counted per address and refused with 429
//! past the limit ([`super::throttle`]), the request timed for the metrics, and the RXON
//! headers added to the answer.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderValue;
use axum::http::header::RETRY_AFTER;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::throttle::{Realm, WrongToken};
use super::{AppState, guard};

pub async fn front(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let timer = crate::metrics::HttpTimer::start(&request);
    let realm = Realm::of(request.uri().path());
    let to_worker = realm == Realm::Worker;
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| {
            state
                .auth_failures
                .proxies
                .client(c.0.ip(), request.headers())
        });
    let mut response = match guard::refused_before_the_body(&state, &mut request).await {
        Some(refused) => refused.into_response(),
        None => next.run(request).await,
    };
    // A wrong credential is counted; past the limit its answer is a 429.
    if let Some(ip) = peer
        && response.extensions().get::<WrongToken>().is_some()
        && let Some((refused, retry)) = state.auth_failures.record(ip, realm)
    {
        response = refused.into_response();
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry));
    }
    let headers = response.headers_mut();
    headers.insert(
        rxon::HEADER_RXON_VERSION,
        HeaderValue::from_static(rxon::PROTOCOL_VERSION),
    );
    if to_worker && let Ok(v) = HeaderValue::from_str(&state.engine.registry().revision()) {
        headers.insert(rxon::deploy::HEADER_PLUGINS_REVISION, v);
    }
    timer.finish(&response);
    response
}
