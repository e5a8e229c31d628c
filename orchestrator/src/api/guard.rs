//! Authenticate before reading: a request to `/api` or `/_worker` whose
//! headers carry no credential we know is answered 401/403 at once, before
//! its body is read (an unauthenticated client cannot make the server buffer
//! bodies). The handlers then check fully (worker id, signature).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

pub async fn authenticate_first(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let public = matches!(path, "/api/openapi.json" | "/api/docs");
    let checked = if public {
        Ok(())
    } else if path.starts_with("/api/") || path == "/api" {
        state.auth.client(request.headers()).map(|_| ())
    } else if path.starts_with("/_worker/") {
        state.auth.known_worker_token(request.headers())
    } else {
        Ok(())
    };
    match checked {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}
