//! `lab ready`'s findings: SSH answers, nested KVM works, every provisioning step is done,
//! and a packstack controller's OpenStack endpoints answer HTTP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::guest::connect::{locate, remote_shell, target};
use crate::guest::kvm::KVM_PROBE;
use crate::guest::ssh::{Key, Unanswered};
use crate::guest::steps;
use crate::libvirt::Libvirt;
use crate::profile::Profile;
use crate::ui::{Stream, Style, Table};

/// One line of the readiness report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub vm: String,
    /// `ssh`, `kvm`, `steps`, `endpoint`.
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Readiness {
    pub profile: String,
    pub ready: bool,
    pub findings: Vec<Finding>,
    pub ms: u64,
}

/// The OpenStack endpoints packstack sets up on the controller, by service.
pub fn openstack_endpoints(controller: &str) -> Vec<(&'static str, String)> {
    vec![
        ("keystone", format!("http://{controller}:5000/v3")),
        ("nova", format!("http://{controller}:8774/")),
        ("glance", format!("http://{controller}:9292/")),
        ("neutron", format!("http://{controller}:9696/")),
        ("placement", format!("http://{controller}:8778/")),
        ("horizon", format!("http://{controller}/dashboard/")),
    ]
}

/// GET `url` (plain http) and read the status line: an endpoint "answers" when it gives
/// any HTTP status below 500.
pub fn http_status(url: &str, timeout: Duration) -> Result<u16> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// is probed"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = if hostport.contains(':') {
        hostport.parse()
    } else {
        format!("{hostport}:80").parse()
    }
    .with_context(|| format!("{url}: the host must be an IP address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // One write: a server may answer and hang up as soon as it has the first bytes, and a
    // request still being written then fails; its answer is read all the same.
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {hostport}\r\nUser-Agent: lab\r\nConnection: close\r\n\r\n"
    );
    let sent = stream.write_all(request.as_bytes());
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let n = match stream.read(&mut head[got..]) {
            Ok(n) => n,
            Err(_) if got > 0 => break,
            Err(e) => {
                return Err(match sent {
                    Err(w) => {
                        anyhow::Error::new(w).context(format!("sending the request to {url}"))
                    }
                    Ok(()) => anyhow::Error::new(e).context(format!("reading the answer of {url}")),
                });
            }
        };
        if n == 0 {
            break;
        }
        got += n;
    }
    let line = String::from_utf8_lossy(&head[..got]);
    let status = line
        .strip_prefix("HTTP/")
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .with_context(|| format!("{url} did not answer HTTP: {:?}", line.trim()))?;
    Ok(status)
}

pub fn vm_readiness(
    lv: &Libvirt,
    profile: &Profile,
    vm: &str,
    spec: &crate::profile::VmSpec,
    key: &std::result::Result<Key, String>,
    hint: &str,
    timeout: Duration,
) -> Vec<Finding> {
    let finding = |check: &str, ok: bool, detail: String| Finding {
        vm: vm.to_string(),
        check: check.to_string(),
        ok,
        detail,
    };
    if let Err(e) = locate(lv, profile, vm) {
        return vec![finding("ssh", false, format!("{e:#}"))];
    }
    let key = match key {
        Ok(k) => k,
        Err(e) => return vec![finding("ssh", false, e.clone())],
    };
    let t = match target(lv, profile, vm, key) {
        Ok(t) => t,
        Err(e) => return vec![finding("ssh", false, format!("{e:#}"))],
    };
    if let Err(why) = t.probe(timeout, timeout + Duration::from_secs(5)) {
        let detail = match why {
            Unanswered::HostKey(refused) => refused,
            Unanswered::Other(e) => format!("no SSH answer at {}: {e}{hint}", t.ip),
        };
        return vec![finding("ssh", false, detail)];
    }
    let mut out = vec![finding("ssh", true, format!("root@{} answers", t.ip))];
    if spec.nested {
        let probe = t
            .command(true, timeout)
            .arg("sh -s")
            .stdin(KVM_PROBE)
            .timeout(timeout + Duration::from_secs(5))
            .run();
        out.push(match probe {
            Ok(c) => {
                let line = c.stdout.trim().to_string();
                match line.strip_prefix("ok: ") {
                    Some(detail) => finding("kvm", true, detail.to_string()),
                    None => finding(
                        "kvm",
                        false,
                        line.strip_prefix("no: ").unwrap_or(&line).to_string(),
                    ),
                }
            }
            Err(e) => finding("kvm", false, format!("probing /dev/kvm: {e}")),
        });
    }
    let role = spec.role.as_deref();
    match steps::steps_for(profile, vm, role) {
        Ok(steps) if steps.is_empty() => {}
        Ok(steps) => match steps::recorded(remote_shell(&t), &steps, steps::DONE_DIR) {
            Ok(rec) => {
                let missing: Vec<&str> = rec
                    .iter()
                    .filter(|(_, done)| !done)
                    .map(|(n, _)| n.as_str())
                    .collect();
                out.push(if missing.is_empty() {
                    finding(
                        "steps",
                        true,
                        format!("{} of {} done", rec.len(), rec.len()),
                    )
                } else {
                    finding(
                        "steps",
                        false,
                        format!(
                            "{} of {} done; not done: {} (`lab up {}` runs them)",
                            rec.len() - missing.len(),
                            rec.len(),
                            missing.join(", "),
                            profile.cli_name()
                        ),
                    )
                });
            }
            Err(e) => out.push(finding(
                "steps",
                false,
                format!("reading the records: {e:#}"),
            )),
        },
        Err(e) => out.push(finding("steps", false, format!("{e:#}"))),
    }
    if profile.base.cloud_init {
        let got = t
            .command(true, timeout)
            .arg(crate::guest::cloud_init::STATUS)
            .timeout(timeout + Duration::from_secs(5))
            .capture();
        out.push(match got {
            Ok(c) => match crate::guest::cloud_init::parse_status(&c.stdout, c.code) {
                crate::guest::cloud_init::Status::Done => {
                    finding("cloud-init", true, "done".into())
                }
                crate::guest::cloud_init::Status::Running(what) => {
                    finding("cloud-init", false, format!("not finished: {what}"))
                }
                crate::guest::cloud_init::Status::Error(said) => {
                    finding("cloud-init", false, format!("ended in error: {said}"))
                }
                crate::guest::cloud_init::Status::Missing => {
                    finding("cloud-init", false, "the image has no cloud-init".into())
                }
            },
            Err(e) => finding("cloud-init", false, format!("{e}")),
        });
    }
    match steps::probes_for(profile, vm, role) {
        Ok(probes) => {
            for probe in probes {
                let got = t
                    .command(true, timeout)
                    .arg("sh -s")
                    .stdin(probe.run.clone().into_bytes())
                    .timeout(probe.timeout)
                    .capture();
                out.push(match got {
                    Ok(c) if c.success() => finding("probe", true, probe.name),
                    Ok(c) => {
                        let said = format!("{}\n{}", c.stdout.trim(), c.stderr.trim());
                        let last = said.trim().lines().last().unwrap_or("").to_string();
                        finding(
                            "probe",
                            false,
                            format!("{}: {} ({last})", probe.name, c.exit()),
                        )
                    }
                    Err(e) => finding("probe", false, format!("{}: {e}", probe.name)),
                });
            }
        }
        Err(e) => out.push(finding("probe", false, format!("{e:#}"))),
    }
    out
}

/// The readiness report as a table, and one closing line.
pub fn render(r: &Readiness) -> String {
    let mut t = Table::new(["vm", "check", "", "detail"]);
    for f in &r.findings {
        t.row(vec![
            (f.vm.clone(), Style::Plain),
            (f.check.clone(), Style::Plain),
            if f.ok {
                ("ok".into(), Style::Green)
            } else {
                ("NOT READY".into(), Style::Red)
            },
            (f.detail.clone(), Style::Plain),
        ]);
    }
    let mut out = t.render(Stream::Stdout);
    let failed = r.findings.iter().filter(|f| !f.ok).count();
    out.push_str(&if r.ready {
        format!("{}: ready\n", r.profile)
    } else if r.findings.is_empty() {
        format!("{}: NOT READY: nothing to check\n", r.profile)
    } else {
        format!(
            "{}: NOT READY: {failed} of {} checks failed\n",
            r.profile,
            r.findings.len()
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve(status: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            }
        });
        format!("http://{addr}/v3")
    }

    #[test]
    fn an_endpoint_answers_with_its_http_status() {
        let t = Duration::from_secs(5);
        assert_eq!(http_status(&serve("300 Multiple Choices"), t).unwrap(), 300);
        assert_eq!(
            http_status(&serve("503 Service Unavailable"), t).unwrap(),
            503
        );
        // Nothing listening: a clear error, quickly.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = http_status(&format!("http://{addr}/"), t).unwrap_err();
        assert!(format!("{err:#}").contains("connecting to"), "{err:#}");
        // Not HTTP at all.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let _ = s.write_all(b"SSH-2.0-dropbear\r\n");
            }
        });
        let err = http_status(&format!("http://{addr}/"), t).unwrap_err();
        assert!(
            format!("{err:#}").contains("did not answer HTTP"),
            "{err:#}"
        );
    }

    #[test]
    fn the_report_says_ready_only_when_every_check_passed() {
        let f = |ok| Finding {
            vm: "aio".into(),
            check: "ssh".into(),
            ok,
            detail: "root@10.0.0.10 answers".into(),
        };
        let mut r = Readiness {
            profile: "p".into(),
            ready: true,
            findings: vec![f(true)],
            ms: 1,
        };
        assert!(render(&r).ends_with("p: ready\n"));
        r.findings.push(f(false));
        r.ready = false;
        let text = render(&r);
        assert!(text.contains("NOT READY: 1 of 2 checks failed"), "{text}");
    }
}
