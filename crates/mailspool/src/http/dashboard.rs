//! placeholder
use std::sync::Arc;
use axum::Router;
use super::AppState;
pub fn routes() -> Router<Arc<AppState>> { Router::new() }
