//! Every request's first and last stop, in one middleware (each layer of
//! `from_fn` costs a boxed future and a clone of the route's service per
//! request; docs/benchmarks.md): credentials checked before the body is read
//! ([`super::guard`]), the request timed for the metrics, and the RXON
//! headers added to the answer.

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AppState, guard};

pub async fn front(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let timer = crate::metrics::HttpTimer::start(&request);
    let to_worker = request.uri().path().starts_with("/_worker/");
    let mut response = match guard::refused_before_the_body(&state, &request) {
        Some(refused) => refused.into_response(),
        None => next.run(request).await,
    };
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
