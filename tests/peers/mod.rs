//! Real peers on 127.0.0.1 for the alert tests: a small SMTP server that keeps every mail it
//! receives, and an HTTP server that checks DingTalk and Feishu signatures the way those services
//! do and answers as each test asks (200, 500, errcode 130101 or 310000, or no answer at all).
#![allow(dead_code)]

use base64::Engine;
use chrono::Utc;
use hmac::{KeyInit, Mac};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn hmac_b64(key: &[u8], msg: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).unwrap();
    mac.update(msg);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A runtime on its own thread, so synchronous tests (driving the binary) can host peers.
fn background_runtime() -> tokio::runtime::Handle {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        tx.send(rt.handle().clone()).unwrap();
        rt.block_on(std::future::pending::<()>());
    });
    rx.recv().unwrap()
}

/// A free port on 127.0.0.1 nothing listens on (yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ---- SMTP -------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
    /// `AUTH` lines as sent (base64).
    pub auth: Vec<String>,
}

#[derive(Clone)]
pub struct Smtp {
    pub port: u16,
    pub mails: Arc<Mutex<Vec<Mail>>>,
}

impl Smtp {
    pub fn start() -> Smtp {
        let handle = background_runtime();
        let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let kept = mails.clone();
        handle.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let _ = converse(stream, kept).await;
                });
            }
        });
        Smtp { port, mails }
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }
}

async fn converse(stream: tokio::net::TcpStream, mails: Arc<Mutex<Vec<Mail>>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 peer.test ESMTP ready\r\n").await?;
    let mut mail = Mail::default();
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-peer.test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("HELO") {
            b"250 peer.test\r\n"
        } else if upper.starts_with("AUTH") {
            mail.auth.push(line.clone());
            b"235 2.7.0 authenticated\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            mail.from = line[10..].trim().trim_matches(['<', '>']).split('>').next().unwrap_or("").to_string();
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO:") {
            mail.to.push(line[8..].trim().trim_matches(['<', '>']).to_string());
            b"250 OK\r\n"
        } else if upper.starts_with("DATA") {
            write.write_all(b"354 go ahead\r\n").await?;
            let mut data = String::new();
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
                data.push_str(&l);
                data.push('\n');
            }
            mail.data = data;
            mails.lock().unwrap().push(std::mem::take(&mut mail));
            b"250 OK queued as 1\r\n"
        } else if upper.starts_with("QUIT") {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"250 OK\r\n"
        };
        write.write_all(reply).await?;
    }
    Ok(())
}

// ---- HTTP -------------------------------------------------------------------------------------

/// How the HTTP peer answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Ok,
    Status500,
    /// DingTalk "sent too fast".
    TooFast,
    /// DingTalk "bad sign / keyword / IP".
    BadSign,
    /// Never answers.
    Hang,
}

/// One request the peer received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `dingtalk`, `feishu`, `wecom`, `slack`, `webhook`.
    pub service: String,
    pub body: serde_json::Value,
    /// The signature checked out (DingTalk, Feishu, webhook), or `None` without one.
    pub signed: Option<bool>,
    /// DingTalk: the signed `timestamp` (ms).
    pub timestamp_ms: Option<i64>,
    /// What it answered.
    pub answered: String,
}

#[derive(Clone)]
pub struct Http {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub mode: Arc<Mutex<Mode>>,
    /// The services' secrets, as the services know them.
    pub ding_secret: String,
    pub feishu_secret: String,
    pub webhook_secret: String,
}

struct PeerState {
    http: Http,
}

impl Http {
    /// Listens on `port` (0: any).
    pub fn start_on(port: u16, secrets: (&str, &str, &str)) -> Http {
        let handle = background_runtime();
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let http = Http {
            port,
            received: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Ok)),
            ding_secret: secrets.0.into(),
            feishu_secret: secrets.1.into(),
            webhook_secret: secrets.2.into(),
        };
        let state = Arc::new(PeerState { http: http.clone() });
        handle.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new()
                .route("/{service}", axum::routing::post(receive))
                .route("/{service}/{token}", axum::routing::post(receive))
                .with_state(state);
            axum::serve(listener, app).await.unwrap();
        });
        http
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

async fn receive(
    axum::extract::State(state): axum::extract::State<Arc<PeerState>>,
    axum::extract::Path(params): axum::extract::Path<Vec<(String, String)>>,
    axum::extract::Query(query): axum::extract::Query<std::collections::BTreeMap<String, String>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, String) {
    let http = &state.http;
    let service = params.iter().find(|(k, _)| k == "service").map(|(_, v)| v.clone()).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let now_ms = Utc::now().timestamp_millis();
    let mut timestamp_ms = None;
    // Each service checks its signature its own way; a timestamp over an hour off is refused too.
    let signed = match service.as_str() {
        "dingtalk" => query.get("sign").map(|sign| {
            let ts: i64 = query.get("timestamp").and_then(|t| t.parse().ok()).unwrap_or(0);
            timestamp_ms = Some(ts);
            let expected = hmac_b64(http.ding_secret.as_bytes(), format!("{ts}\n{}", http.ding_secret).as_bytes());
            *sign == expected && (now_ms - ts).abs() < 3_600_000
        }),
        "feishu" => json.get("sign").and_then(|s| s.as_str()).map(|sign| {
            let ts: i64 = json["timestamp"].as_str().and_then(|t| t.parse().ok()).unwrap_or(0);
            let expected = hmac_b64(format!("{ts}\n{}", http.feishu_secret).as_bytes(), b"");
            sign == expected && (now_ms / 1000 - ts).abs() < 3_600
        }),
        "webhook" => headers.get("x-rhaiflow-signature").and_then(|v| v.to_str().ok()).map(|sig| {
            let mut mac = HmacSha256::new_from_slice(http.webhook_secret.as_bytes()).unwrap();
            mac.update(&body);
            sig == format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }),
        _ => None,
    };
    let mode = *http.mode.lock().unwrap();
    let (status, answer) = match (mode, service.as_str(), signed) {
        (Mode::Hang, ..) => {
            http.received.lock().unwrap().push(Received {
                service: service.clone(),
                body: json,
                signed,
                timestamp_ms,
                answered: "(no answer)".into(),
            });
            std::future::pending::<()>().await;
            unreachable!()
        }
        (Mode::Status500, ..) => (500, "internal error".to_string()),
        (_, "dingtalk", Some(false)) | (Mode::BadSign, "dingtalk", _) => {
            (200, r#"{"errcode":310000,"errmsg":"sign not match, more: [https://ding-doc.dingtalk.com/doc#/serverapi2/qf2nxq]"}"#.into())
        }
        (Mode::TooFast, "dingtalk", _) => (200, r#"{"errcode":130101,"errmsg":"send too fast"}"#.into()),
        (_, "feishu", Some(false)) => (200, r#"{"code":19021,"msg":"sign match fail or timestamp is not within one hour from current time"}"#.into()),
        (_, "dingtalk" | "wecom", _) => (200, r#"{"errcode":0,"errmsg":"ok"}"#.into()),
        (_, "feishu", _) => (200, r#"{"code":0,"msg":"success","data":{}}"#.into()),
        (_, "slack", _) => (200, "ok".into()),
        (_, "webhook", Some(false)) => (401, "bad signature".into()),
        _ => (200, "{}".into()),
    };
    http.received.lock().unwrap().push(Received {
        service,
        body: json,
        signed,
        timestamp_ms,
        answered: answer.clone(),
    });
    (axum::http::StatusCode::from_u16(status).unwrap(), answer)
}
