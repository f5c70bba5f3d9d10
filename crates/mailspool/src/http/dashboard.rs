//! placeholder
use super::AppState;
use axum::Router;
use std::sync::Arc;
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
