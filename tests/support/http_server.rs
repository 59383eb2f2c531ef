//! A real HTTP/1.1 server for the tests: serves files from memory, or directories from disk
//! under a prefix, honours `Range: bytes=N-` (and `N-M`), counts and records requests, and
//! can misbehave the way real servers and networks do: cut a transfer mid-way, ignore Range,
//! send no length, answer with an error status or an HTML page. On 127.0.0.1, or on every
//! address of the host ([`Server::start_public`]) for VMs that reach it at their gateway.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    /// The Range header, as sent.
    pub range: Option<String>,
    /// Who asked (a VM, or lab on the host).
    pub peer: IpAddr,
    /// The status answered.
    pub status: u16,
}

#[derive(Clone)]
enum Route {
    File {
        body: Arc<Vec<u8>>,
        content_type: String,
    },
    Status(u16),
    /// Files under a directory, read when asked for.
    Dir(PathBuf),
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    requests: Vec<Request>,
    /// The next file responses are cut after this many body bytes, one entry each.
    cuts: Vec<usize>,
    ignore_range: bool,
    no_length: bool,
    /// The next response for this path stops after this many body bytes and holds the
    /// connection open (a transfer in progress) until the client goes away.
    stall: Option<(String, usize)>,
}

pub struct Server {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_on(Ipv4Addr::LOCALHOST)
    }

    /// On every address of the host (0.0.0.0): the lab's VMs reach it at their gateway.
    pub fn start_public() -> Server {
        Server::start_on(Ipv4Addr::UNSPECIFIED)
    }

    fn start_on(addr: Ipv4Addr) -> Server {
        let listener = TcpListener::bind((addr, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let accept = thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                thread::spawn(move || handle(conn, &s));
            }
        });
        Server {
            port,
            state,
            stop,
            accept: Some(accept),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The URL of `path` at another address of the host (a lab network's gateway).
    pub fn url_at(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    /// Serve the files under `dir` at `prefix` (`/repo/` serves `dir/Packages` as
    /// `/repo/Packages`), read from disk when asked for.
    pub fn serve_dir(&self, prefix: &str, dir: &Path) {
        let prefix = format!("/{}/", prefix.trim_matches('/'));
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(prefix, Route::Dir(dir.to_path_buf()));
    }

    /// Serve `body` at `path` as application/octet-stream.
    pub fn serve(&self, path: &str, body: Vec<u8>) {
        self.serve_as(path, body, "application/octet-stream");
    }

    pub fn serve_as(&self, path: &str, body: Vec<u8>, content_type: &str) {
        self.state.lock().unwrap().routes.insert(
            path.into(),
            Route::File {
                body: Arc::new(body),
                content_type: content_type.into(),
            },
        );
    }

    /// Answer `path` with `status` and a short text body.
    pub fn status(&self, path: &str, status: u16) {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.into(), Route::Status(status));
    }

    /// Cut the next file response after `bytes` of its body (the connection is closed).
    pub fn cut_next_after(&self, bytes: usize) {
        self.state.lock().unwrap().cuts.push(bytes);
    }

    /// Answer every request with the whole file, Range or not (as some servers do).
    /// The next response for `path` sends `bytes` of its body, then hangs, connection open.
    pub fn stall_next_after(&self, path: &str, bytes: usize) {
        self.state.lock().unwrap().stall = Some((path.to_string(), bytes));
    }

    pub fn ignore_range(&self, yes: bool) {
        self.state.lock().unwrap().ignore_range = yes;
    }

    /// Send no Content-Length: the body ends when the connection closes.
    pub fn no_length(&self, yes: bool) {
        self.state.lock().unwrap().no_length = yes;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests for `path` so far.
    pub fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path == path).count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag; once it is joined the port is closed,
        // and a request to it is refused (a server gone away).
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn handle(mut conn: TcpStream, state: &Mutex<State>) {
    let peer = conn
        .peer_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    let (route, cut, ignore_range, no_length, stall) = {
        let mut s = state.lock().unwrap();
        let route = s
            .routes
            .get(&path)
            .cloned()
            .or_else(|| from_dir(&s.routes, &path));
        let status = match &route {
            None => 404,
            Some(Route::Status(code)) => *code,
            Some(_) if range.is_some() && !s.ignore_range => 206,
            Some(_) => 200,
        };
        s.requests.push(Request {
            path: path.clone(),
            range: range.clone(),
            peer,
            status,
        });
        let cut = match route {
            Some(Route::File { .. }) if !s.cuts.is_empty() => Some(s.cuts.remove(0)),
            _ => None,
        };
        let stall = match (&route, &s.stall) {
            (Some(Route::File { .. }), Some((p, n))) if *p == path => {
                let n = *n;
                s.stall = None;
                Some(n)
            }
            _ => None,
        };
        (route, cut, s.ignore_range, s.no_length, stall)
    };
    let (body, content_type) = match route {
        None => return respond_status(&mut conn, 404),
        Some(Route::Status(code)) => return respond_status(&mut conn, code),
        Some(Route::File { body, content_type }) => (body, content_type),
        Some(Route::Dir(_)) => unreachable!("a directory's file is read by from_dir"),
    };
    let start = range
        .as_deref()
        .filter(|_| !ignore_range)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let len = body.len();
    let mut head = match start {
        Some(s) if s >= len => {
            let _ = write!(
                conn,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return;
        }
        Some(s) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{len}\r\n",
            len - 1
        ),
        None => "HTTP/1.1 200 OK\r\nAccept-Ranges: bytes\r\n".to_string(),
    };
    let from = start.unwrap_or(0);
    head.push_str(&format!("Content-Type: {content_type}\r\n"));
    if !no_length {
        head.push_str(&format!("Content-Length: {}\r\n", len - from));
    }
    head.push_str("Connection: close\r\n\r\n");
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    if let Some(n) = stall {
        let _ = conn.write_all(&body[from..(from + n).min(len)]);
        let _ = conn.flush();
        // Hang like a slow mirror; the client goes away first.
        let mut buf = [0u8; 1];
        let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(120)));
        let _ = std::io::Read::read(&mut conn, &mut buf);
        return;
    }
    let end = cut.map_or(len, |c| (from + c).min(len));
    let _ = conn.write_all(&body[from..end]);
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Both);
}

/// The file a directory route holds for `path`, as a file route. `.` segments are dropped
/// (a flat apt repository is asked for `/repo/./Packages`), `..` finds nothing; the name is
/// taken percent-decoded, else as sent (apt escapes the `%` of `1%3a14_amd64.deb`, or not).
fn from_dir(routes: &HashMap<String, Route>, path: &str) -> Option<Route> {
    let path = path.split('?').next().unwrap_or("");
    let segments: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if segments.contains(&"..") {
        return None;
    }
    let clean = format!("/{}", segments.join("/"));
    routes.iter().find_map(|(prefix, route)| {
        let Route::Dir(dir) = route else { return None };
        let rest = clean.strip_prefix(prefix.as_str())?;
        [percent_decode(rest), rest.to_string()]
            .into_iter()
            .map(|name| dir.join(name))
            .find(|file| file.is_file())
            .and_then(|file| std::fs::read(file).ok())
            .map(|body| Route::File {
                body: Arc::new(body),
                content_type: "application/octet-stream".into(),
            })
    })
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

fn respond_status(conn: &mut TcpStream, code: u16) {
    let reason = match code {
        404 => "Not Found",
        403 => "Forbidden",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let body = format!("<html><body><h1>{code} {reason}</h1></body></html>\n");
    let _ = write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.shutdown(Shutdown::Write);
}
