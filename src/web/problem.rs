//! RFC 7807 problem bodies (`application/problem+json`), as Airflow's API answers errors.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Where Airflow's problem types point; clients match on `status` and `title`.
const TYPE_BASE: &str =
    "https://airflow.apache.org/docs/apache-airflow/2.10.5/stable-rest-api-ref.html#section/Errors/";

/// An error answer: status, a short title and a detail naming what is wrong.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub title: String,
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, title: impl Into<String>, detail: impl Into<String>) -> Problem {
        Problem { status, title: title.into(), detail: detail.into() }
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "Bad Request", detail)
    }

    pub fn not_found(title: impl Into<String>, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, title, detail)
    }

    pub fn conflict(title: impl Into<String>, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, title, detail)
    }

    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", detail)
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::CONFLICT => "AlreadyExists",
            StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
            StatusCode::UNAUTHORIZED => "Unauthenticated",
            StatusCode::FORBIDDEN => "PermissionDenied",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
            _ => "Unknown",
        }
    }
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Self {
        Problem::internal(e.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": format!("{TYPE_BASE}{}", self.kind()),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        (self.status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
    }
}

/// A path no route serves.
pub async fn no_route(uri: axum::http::Uri) -> Problem {
    Problem::not_found("Not Found", format!("no API route `{}`; see /api/v1/openapi.json", uri.path()))
}

/// A path served, but not for this method.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method Not Allowed",
        format!("`{method} {}` is not served; see /api/v1/openapi.json", uri.path()),
    )
}

/// Any other error answer (axum's own rejections: a path segment that is not UTF-8, a body over
/// the size limit) as a problem body, so every error a client sees has one shape.
pub async fn as_problem(resp: Response) -> Response {
    let status = resp.status();
    let is_problem = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v == "application/problem+json");
    if is_problem || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 10).await.unwrap_or_default();
    let title = status.canonical_reason().unwrap_or("Error");
    Problem::new(status, title, String::from_utf8_lossy(&bytes).trim().to_string()).into_response()
}

/// A POST to the API must say its body is JSON (`Content-Type: application/json`), as Airflow's
/// API does (415 otherwise). This also keeps other web sites out: a browser sends a cross-site
/// POST without asking first only with a form's content types (or none), never with JSON.
pub async fn needs_json(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if req.method() == axum::http::Method::POST && !json {
        return Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type",
            "the request body must be JSON, sent with `Content-Type: application/json`",
        )
        .into_response();
    }
    next.run(req).await
}
