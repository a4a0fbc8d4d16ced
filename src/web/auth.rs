//! Who is asking. Every request carries a [`Caller`] in its extensions, put there by
//! [`identify`]: UI pages read it to show or hide actions and to put the CSRF token in their
//! forms; handlers that act check [`Caller::may`] and [`Caller::check_csrf`].
//!
//! With `[webserver] auth` unset (the default, loopback only) everyone is an admin without a name.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;

/// What a user may do: each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads everything but DAG source when auth is on.
    Viewer,
    /// Also triggers, clears, marks, pauses.
    Operator,
    /// Also manages users.
    Admin,
}

/// The caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The logged-in user; `None` when auth is off.
    pub user: Option<String>,
    pub role: Role,
    /// Whether `[webserver] auth` is on (the UI then shows "log out").
    pub auth_on: bool,
    /// The token every UI form must send back (hidden field `csrf`).
    pub csrf: Arc<str>,
}

impl Caller {
    pub fn may(&self, role: Role) -> bool {
        self.role >= role
    }

    /// Whether `sent` (a form's `csrf` field) is this caller's token.
    pub fn check_csrf(&self, sent: &str) -> bool {
        !self.csrf.is_empty() && constant_time_eq(self.csrf.as_bytes(), sent.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The process's token for callers without a session (auth off).
#[derive(Clone)]
pub struct Auth {
    anonymous_csrf: Arc<str>,
}

impl Auth {
    pub fn new() -> Auth {
        Auth { anonymous_csrf: random_token().into() }
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth::new()
    }
}

/// 32 hex digits from the kernel's random source.
pub fn random_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    hex::encode(bytes)
}

/// The layer that puts a [`Caller`] on every request.
pub async fn identify(
    axum::extract::State(auth): axum::extract::State<Auth>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = Caller { user: None, role: Role::Admin, auth_on: false, csrf: auth.anonymous_csrf.clone() };
    req.extensions_mut().insert(caller);
    next.run(req).await
}
