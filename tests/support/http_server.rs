//! A small HTTP/1.1 file server for the tests: directories served under URL prefixes, on
//! every address of the host (VMs reach it at their network's gateway), with GET, HEAD and
//! byte ranges (a resumed download asks for one), so lab's image download and the guests'
//! apt meet a real web server's answers. Every request is logged for the test to read.
//! It stops when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request, as answered.
#[derive(Debug, Clone)]
pub struct Served {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    pub peer: SocketAddr,
}

pub struct HttpServer {
    port: u16,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Served>>>,
    accept: Option<JoinHandle<()>>,
}

type Routes = Arc<Vec<(String, PathBuf)>>;

impl HttpServer {
    /// Serve each `(prefix, dir)`: `GET /prefix/a/b` reads `dir/a/b`. Binds 0.0.0.0 on a
    /// port the kernel picks.
    pub fn serve(routes: &[(&str, &Path)]) -> HttpServer {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("binding 0.0.0.0");
        let port = listener.local_addr().unwrap().port();
        let routes: Routes = Arc::new(
            routes
                .iter()
                .map(|(p, d)| (format!("/{}/", p.trim_matches('/')), d.to_path_buf()))
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (stop, log) = (stop.clone(), log.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (routes, log) = (routes.clone(), log.clone());
                    std::thread::spawn(move || {
                        let _ = handle(conn, &routes, &log);
                    });
                }
            })
        };
        HttpServer {
            port,
            stop,
            log,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://HOST:PORT/PATH`.
    pub fn url(&self, host: &str, path: &str) -> String {
        format!(
            "http://{host}:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Served> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            Duration::from_secs(1),
        );
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Answer the requests of one connection (kept alive while the client asks for it).
fn handle(conn: TcpStream, routes: &Routes, log: &Mutex<Vec<Served>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let peer = conn.peer_addr()?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, target, version) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("HTTP/1.0").to_string(),
        );
        let mut range = None;
        let mut close = version == "HTTP/1.0";
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "range" {
                    range = Some(v.to_string());
                } else if k == "connection" {
                    close = v.eq_ignore_ascii_case("close");
                }
            }
        }
        let (status, bytes) = respond(&mut out, &method, &target, range.as_deref(), routes)?;
        log.lock().unwrap().push(Served {
            method,
            path: target,
            status,
            bytes,
            peer,
        });
        if close {
            return Ok(());
        }
    }
}

/// The file a request path names, if a route holds it. `.` segments are dropped (a flat
/// apt repository is asked for `/repo/./Packages`), `..` is refused; the path is taken
/// percent-decoded, else as sent (apt escapes the `%` in `1%3a14_amd64.deb` or not).
fn resolve(target: &str, routes: &Routes) -> Option<PathBuf> {
    let path = target.split('?').next().unwrap_or("");
    let segments: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if segments.contains(&"..") {
        return None;
    }
    let clean = format!("/{}", segments.join("/"));
    for (prefix, dir) in routes.iter() {
        if let Some(rest) = clean.strip_prefix(prefix.as_str()) {
            for name in [percent_decode(rest), rest.to_string()] {
                let file = dir.join(&name);
                if file.is_file() {
                    return Some(file);
                }
            }
        }
    }
    None
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `bytes=START-` or `bytes=START-END` of a file of `len` bytes: the inclusive range.
fn parse_range(range: &str, len: u64) -> Option<(u64, u64)> {
    let spec = range.strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => len.checked_sub(1)?,
        e => e.parse::<u64>().ok()?.min(len.checked_sub(1)?),
    };
    (start <= end).then_some((start, end))
}

fn respond(
    out: &mut TcpStream,
    method: &str,
    target: &str,
    range: Option<&str>,
    routes: &Routes,
) -> std::io::Result<(u16, u64)> {
    let head = |out: &mut TcpStream, status: &str, extra: &str, len: u64| {
        write!(
            out,
            "HTTP/1.1 {status}\r\nServer: lab-test\r\nContent-Length: {len}\r\n\
             Content-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\n{extra}\r\n"
        )
    };
    if method != "GET" && method != "HEAD" {
        head(out, "405 Method Not Allowed", "", 0)?;
        return Ok((405, 0));
    }
    let Some(path) = resolve(target, routes) else {
        head(out, "404 Not Found", "", 0)?;
        return Ok((404, 0));
    };
    let mut file = std::fs::File::open(&path)?;
    let len = file.metadata()?.len();
    let (status, start, count) = match range.map(|r| parse_range(r, len)) {
        None => (200, 0, len),
        Some(Some((s, e))) => (206, s, e - s + 1),
        Some(None) => {
            head(
                out,
                "416 Range Not Satisfiable",
                &format!("Content-Range: bytes */{len}\r\n"),
                0,
            )?;
            return Ok((416, 0));
        }
    };
    if status == 206 {
        head(
            out,
            "206 Partial Content",
            &format!(
                "Content-Range: bytes {start}-{}/{len}\r\n",
                start + count - 1
            ),
            count,
        )?;
    } else {
        head(out, "200 OK", "", count)?;
    }
    if method == "HEAD" {
        return Ok((status, 0));
    }
    file.seek(SeekFrom::Start(start))?;
    let sent = std::io::copy(&mut file.take(count), out)?;
    out.flush()?;
    Ok((status, sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-", 10), Some((0, 9)));
        assert_eq!(parse_range("bytes=4-6", 10), Some((4, 6)));
        assert_eq!(parse_range("bytes=4-60", 10), Some((4, 9)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(percent_decode("1%3a14.deb"), "1:14.deb");
    }
}
