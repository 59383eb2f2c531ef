//! A read-only HTTP server for an install tree on this host, for the time of one build.
//!
//! The installer runs with QEMU's user-mode network, where the host's loopback is
//! 10.0.2.2: a tree given as file:///srv/tree/ is served on 127.0.0.1 and the installer
//! reads it as http://10.0.2.2:PORT/. Nothing listens beyond loopback, only GET and HEAD
//! of regular files under the tree's directory are answered, and the server stops when
//! dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use percent_encoding::percent_decode_str;

/// The host as QEMU's user-mode network shows it to a guest.
pub const SLIRP_HOST: &str = "10.0.2.2";

pub struct TreeServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TreeServer {
    /// Serve `root` on 127.0.0.1, on a port the system picks.
    pub fn start(root: &Path) -> Result<TreeServer> {
        let root = root
            .canonicalize()
            .with_context(|| format!("serving install tree {}", root.display()))?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .context("listening on 127.0.0.1 to serve the install tree")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lab-tree-server".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let root = root.clone();
                    // One thread per connection: dnf opens a few at a time, never many.
                    let _ = std::thread::Builder::new()
                        .name("lab-tree-conn".into())
                        .spawn(move || {
                            let _ = handle(conn, &root);
                        });
                }
            })
            .context("starting the install tree server")?;
        crate::ui::debug(format_args!("serving the install tree on {addr}"));
        Ok(TreeServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The tree's URL as the installer (user-mode network) sees it.
    pub fn guest_url(&self) -> String {
        format!("http://{SLIRP_HOST}:{}/", self.port())
    }

    /// The tree's URL on this host.
    pub fn host_url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for TreeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The file a request path names inside `root`, if it is one.
fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let decoded = percent_decode_str(path).decode_utf8_lossy();
    let mut out = root.to_path_buf();
    for c in Path::new(decoded.as_ref()).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    // Symlinks inside the tree may point anywhere; what they point to must stay inside.
    let real = out.canonicalize().ok()?;
    (real.starts_with(root) && real.is_file()).then_some(real)
}

fn handle(mut conn: TcpStream, root: &Path) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Headers are read and ignored (no ranges, no keep-alive).
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
    }
    let mut words = request.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or("/"));
    let head = method == "HEAD";
    if method != "GET" && !head {
        return respond(&mut conn, "405 Method Not Allowed", None);
    }
    match resolve(root, target) {
        Some(path) => match std::fs::File::open(&path) {
            Ok(file) => {
                let len = file.metadata()?.len();
                write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
                )?;
                if !head {
                    let mut file = file;
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        let n = file.read(&mut buf)?;
                        if n == 0 {
                            break;
                        }
                        conn.write_all(&buf[..n])?;
                    }
                }
                conn.flush()?;
                let _ = conn.shutdown(Shutdown::Both);
                Ok(())
            }
            Err(_) => respond(&mut conn, "403 Forbidden", None),
        },
        None => respond(&mut conn, "404 Not Found", None),
    }
}

fn respond(conn: &mut TcpStream, status: &str, body: Option<&str>) -> std::io::Result<()> {
    let body = body.unwrap_or(status);
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()?;
    let _ = conn.shutdown(Shutdown::Both);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Cmd;

    #[test]
    fn serves_files_of_the_tree_and_nothing_else() {
        let top = tempfile::tempdir().unwrap();
        let tree = top.path().join("tree");
        std::fs::create_dir_all(tree.join("images/pxeboot")).unwrap();
        std::fs::write(tree.join(".treeinfo"), "[general]\n").unwrap();
        std::fs::write(tree.join("images/pxeboot/vmlinuz"), vec![7u8; 200_000]).unwrap();
        std::fs::write(top.path().join("secret"), "no").unwrap();
        std::os::unix::fs::symlink(top.path().join("secret"), tree.join("escape")).unwrap();
        let server = TreeServer::start(&tree).unwrap();
        assert!(server.guest_url().starts_with("http://10.0.2.2:"));
        let get = |path: &str| {
            Cmd::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{size_download}",
                ])
                .arg(format!("{}{path}", server.host_url()))
                .run()
                .unwrap()
                .stdout
        };
        assert_eq!(get(".treeinfo"), "200 10");
        assert_eq!(get("images/pxeboot/vmlinuz"), "200 200000");
        assert!(get("escape").starts_with("404"));
        assert!(get("../secret").starts_with("404"));
        assert!(get("%2e%2e/secret").starts_with("404"));
        assert!(get("images").starts_with("404"));
        drop(server);
    }
}
