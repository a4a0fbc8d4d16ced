//! The HTTP servers' limits against hostile clients, over real sockets to a real `rhaiflow
//! webserver`: a client that never finishes its request head is disconnected after
//! `[webserver] header_timeout`, and past `[webserver] max_connections` new connections wait to
//! be accepted instead of taking file descriptors (slowloris).

mod common;
mod peers;

use common::{Home, Running, wait_until};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn webserver(header_timeout: f64, max_connections: u32) -> (Home, Running, u16) {
    let home = Home::new(&[]);
    std::fs::write(
        home.path().join("rhaiflow.toml"),
        format!("[webserver]\nheader_timeout = {header_timeout}\nmax_connections = {max_connections}\n"),
    )
    .unwrap();
    let port = peers::free_port();
    let process = home.spawn(&["webserver", "--port", &port.to_string()]);
    wait_until("the webserver answers", || get(port, "/api/v1/health"));
    (home, process, port)
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    write!(conn, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok()?;
    answer.starts_with("HTTP/1.1 200").then_some(answer)
}

/// A connection that has sent part of a request head, as a slowloris client does.
fn slow_client(port: u16) -> TcpStream {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").unwrap();
    conn
}

/// Whether the server closed `conn` (EOF or reset) within a minute; the server may first answer
/// 408, which is read and skipped.
fn closed_by_server(conn: &mut TcpStream) -> bool {
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    let (_home, _server, port) = webserver(0.5, 512);
    let mut slow = slow_client(port);
    // Trickling bytes does not keep it alive: the timeout is for the whole head.
    slow.write_all(b"a").unwrap();
    assert!(closed_by_server(&mut slow), "the server must close a connection whose head never ends");
    assert!(get(port, "/api/v1/health").is_some(), "and go on serving");
}

#[test]
fn past_max_connections_new_clients_wait_for_a_slot_instead_of_being_served_at_once() {
    let (_home, _server, port) = webserver(3.0, 2);
    let mut slow: Vec<TcpStream> = (0..2).map(|_| slow_client(port)).collect();
    // Both slots are taken by clients that send nothing more: a third client is accepted by the
    // kernel but not served until one of them is dropped by the header timeout.
    let third = std::thread::spawn(move || get(port, "/api/v1/health"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!third.is_finished(), "a third connection was served while both slots were taken");
    for conn in &mut slow {
        assert!(closed_by_server(conn), "the slow clients are dropped at the header timeout");
    }
    assert!(third.join().unwrap().is_some(), "the waiting client is served once a slot is free");
}

#[test]
fn bad_limits_are_config_errors_naming_the_key() {
    let home = Home::new(&[]);
    for (line, key) in [
        ("header_timeout = 0", "webserver.header_timeout"),
        ("header_timeout = -1", "webserver.header_timeout"),
        ("max_connections = 0", "webserver.max_connections"),
        ("max_connections = 100000", "webserver.max_connections"),
    ] {
        std::fs::write(home.path().join("rhaiflow.toml"), format!("[webserver]\n{line}\n")).unwrap();
        let out = home.run(&["dags", "list"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(key), "{line}: {err}");
    }
}
