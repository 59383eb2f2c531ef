//! `lab ssh`, the provisioning steps of `lab up`, and `lab ready`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::cli::{GlobalArgs, ReadyArgs, SshArgs};
use crate::error::{exit, usage};
use crate::fanout;
use crate::guest::packstack;
use crate::guest::provision::{self, StepResult};
use crate::guest::ssh::{self, Key, Target, Unanswered};
use crate::host::Sysroot;
use crate::libvirt::Libvirt;
use crate::names;
use crate::profile::Profile;
use crate::runner::Cmd;
use crate::ui::{self, Stream, Style, Table};

/// How long one SSH connection attempt may take.
const CONNECT: Duration = Duration::from_secs(10);

/// The VM `vm` of `profile` as something to log in to: it must be lab's, running, and
/// have an address.
pub fn target(lv: &Libvirt, profile: &Profile, vm: &str, key: &Key) -> Result<Target> {
    let (domain, ip) = locate(lv, profile, vm)?;
    Ok(Target {
        vm: vm.to_string(),
        known_hosts: ssh::known_hosts_path(&profile.storage.dir, &domain),
        domain,
        ip,
        key: key.private.clone(),
    })
}

/// The domain and address of VM `vm`; an error when the profile has no such VM, it is not
/// running, it is cut off from its network, or it has no lease yet.
pub fn locate(lv: &Libvirt, profile: &Profile, vm: &str) -> Result<(String, String)> {
    let p = &profile.name;
    profile.require_vm(vm)?;
    let domain = names::domain(p, vm);
    let cli = profile.cli_name();
    if !lv.domain_running(&domain) {
        bail!(usage(format!(
            "{vm} of {p} is not running (domain {domain}): `lab up {cli}` first"
        )));
    }
    if let Some((tap, bridge)) = lv
        .detached_interfaces(&domain, &Sysroot::live())
        .into_iter()
        .next()
    {
        bail!(
            "{vm} of {p} is cut off: its interface {tap} is off bridge {bridge} (the network \
             was restarted under the running VM); `lab up {cli}` puts it back"
        );
    }
    let mac = names::mac(p, vm);
    let Some(ip) = lv.lease(&domain, &mac) else {
        bail!(
            "{vm} of {p} has no IP yet (no DHCP lease for {mac} on network {}): it is still \
             booting, or its network is down; `lab status {cli}` shows it",
            names::network(p)
        );
    };
    Ok((domain, ip.to_string()))
}

fn key(profile: &Profile) -> Result<Key> {
    ssh::key_for(
        profile,
        &profile.storage.dir,
        crate::dirs::user_home().as_deref(),
    )
}

/// What to say when ssh itself failed (exit status 255) to reach a VM.
fn unreachable_hint(profile: &Profile) -> String {
    if profile.direct_boot()
        && crate::directboot::host_ssh_server()
            .ok()
            .flatten()
            .is_none()
    {
        format!(
            "; the {} VMs carry an SSH server only when the host has dropbear when they are \
             made: install dropbear-bin, then `lab down {cli} --purge && lab up {cli}`",
            profile.name,
            cli = profile.cli_name()
        )
    } else {
        String::new()
    }
}

/// `lab ssh PROFILE VM [-- COMMAND...]`.
pub fn ssh_command(global: &GlobalArgs, args: &SshArgs) -> Result<u8> {
    let profile = Profile::load(&args.profile)?;
    let lv = Libvirt::open(&global.connect)?;
    locate(&lv, &profile, &args.vm)?;
    let key = key(&profile)?;
    let t = target(&lv, &profile, &args.vm, &key)?;
    let mut cmd = t.command(!args.command.is_empty(), CONNECT);
    if !args.command.is_empty() {
        cmd = cmd.arg("--").arg(Target::remote(&args.command));
    }
    let mut std = cmd.std_command();
    if args.command.is_empty() {
        // An interactive session: ssh gets the terminal; lab's process becomes ssh.
        use std::os::unix::process::CommandExt;
        let err = std.exec();
        bail!("starting ssh: {err}");
    }
    let status = std
        .status()
        .context("starting ssh (install openssh-client)")?;
    match status.code() {
        // ssh's own failures and a remote command's 255 look alike: a second, quiet
        // connection tells them apart, and says why ssh failed when it did.
        Some(255) => match t.probe(CONNECT, CONNECT + Duration::from_secs(5)) {
            Ok(()) => Ok(255),
            Err(Unanswered::HostKey(refused)) => bail!("{refused}"),
            Err(Unanswered::Other(_)) => bail!(
                "could not reach {} of {} over SSH at {} (ssh exit status 255){}",
                t.vm,
                profile.name,
                t.ip,
                unreachable_hint(&profile)
            ),
        },
        Some(code) => Ok(u8::try_from(code).unwrap_or(exit::FAILURE)),
        None => bail!("ssh to {} was {}", t.vm, crate::runner::Exit::of(status)),
    }
}

/// Wait until the VM answers over SSH, or `deadline`; the last error in the failure.
fn wait_ssh(t: &Target, deadline: Instant, hint: &str) -> Result<()> {
    loop {
        let e = match t.probe(Duration::from_secs(5), Duration::from_secs(15)) {
            Ok(()) => return Ok(()),
            // Waiting longer would only show the same key again.
            Err(Unanswered::HostKey(refused)) => bail!("{refused}"),
            Err(Unanswered::Other(e)) => e,
        };
        if Instant::now() >= deadline {
            bail!("{}: no SSH answer at {} in time: {e}{hint}", t.vm, t.ip);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The shell a step runs in: `sh -s` in the VM, reading the script lab sends.
fn remote_shell(t: &Target) -> Cmd {
    t.command(true, CONNECT).arg("sh -s")
}

/// Provisioning of a lab that is up: every VM at once, each VM's steps in order. Returns
/// each VM's step results; the first failing step of any VM is the error.
pub fn provision(
    lv: &Libvirt,
    profile: &Profile,
    plan: &crate::plan::Plan,
    nested_kvm_on_host: bool,
    wait: Duration,
) -> Result<BTreeMap<String, Vec<StepResult>>> {
    let mut out = BTreeMap::new();
    if profile.provision.is_empty() {
        return Ok(out);
    }
    let key = key(profile)?;
    let hint = unreachable_hint(profile);
    let deadline = Instant::now() + wait;
    let answers = if packstack::is_packstack(profile) {
        // Whether KVM works in the computes is asked of the computes themselves.
        let kvm_in_vms = if nested_kvm_on_host {
            kvm_failures(lv, profile, plan, &key, deadline, &hint)?
        } else {
            Vec::new()
        };
        let a = packstack::answer_file_kept(
            profile,
            plan,
            nested_kvm_on_host,
            &kvm_in_vms,
            &packstack::password_path(&profile.storage.dir, &profile.name),
        )?;
        ui::info(format_args!(
            "packstack: CONFIG_NOVA_LIBVIRT_VIRT_TYPE={}: {}",
            a.virt_type, a.why_virt_type
        ));
        Some(a)
    } else {
        None
    };
    let progress = crate::apply::VmProgress::new();
    // The VMs the plan provisions.
    let provisioned = fanout::all(
        plan.vms
            .iter()
            .filter(|vm| plan.provision.iter().any(|a| a.vm() == Some(&vm.name)))
            .map(|vm| (vm, progress.bar(&vm.name))),
        |(vm, _)| vm.name.clone(),
        |(vm, bar)| {
            let r = (|| {
                let steps = provision::steps_for(profile, &vm.name, vm.role.as_deref())?;
                if steps.is_empty() {
                    return Ok((vm.name.clone(), Vec::new()));
                }
                let t = target(lv, profile, &vm.name, &key)?;
                bar.set_message("waiting for SSH");
                wait_ssh(&t, deadline, &hint)?;
                if let Some(a) = &answers
                    && a.controller.to_string() == t.ip
                {
                    bar.set_message("packstack answer file");
                    let path = packstack::answer_file_path(profile)
                        .unwrap_or_else(|| "/root/lab-answers.txt".into());
                    remote_answer_file(&t, &path, &a.text)?;
                }
                let on_line = |step: &str, line: &str| {
                    let line: String = line.chars().take(100).collect();
                    bar.set_message(format!("{step}: {line}"));
                };
                let shell = || remote_shell(&t);
                let done =
                    provision::run_steps(&vm.name, &steps, &shell, provision::DONE_DIR, &on_line)?;
                Ok((vm.name.clone(), done))
            })();
            match &r {
                Ok((_, steps)) => {
                    bar.finish_with_message(format!("provisioned: {}", summary(steps)))
                }
                Err(e) => bar.abandon_with_message(format!("failed: {e:#}")),
            }
            r
        },
    )?;
    out.extend(provisioned);
    Ok(out)
}

/// The packstack compute VMs (the controller of an all-in-one) that should nest but in
/// which /dev/kvm does not work, with why: probed over SSH, all at once.
fn kvm_failures(
    lv: &Libvirt,
    profile: &Profile,
    plan: &crate::plan::Plan,
    key: &Key,
    deadline: Instant,
    hint: &str,
) -> Result<Vec<(String, String)>> {
    let mut computes: Vec<&crate::plan::VmPlan> = plan
        .vms
        .iter()
        .filter(|v| v.role.as_deref() == Some(packstack::COMPUTE_ROLE))
        .collect();
    if computes.is_empty() {
        computes = plan
            .vms
            .iter()
            .filter(|v| {
                v.role
                    .as_deref()
                    .is_some_and(|r| packstack::CONTROLLER_ROLES.contains(&r))
            })
            .collect();
    }
    let probed = fanout::all(
        computes
            .into_iter()
            .filter(|vm| vm.nested && vm.domain_type == "kvm"),
        |vm| vm.name.clone(),
        |vm| {
            let t = target(lv, profile, &vm.name, key)?;
            wait_ssh(&t, deadline, hint)?;
            let line = remote_shell(&t)
                .stdin(KVM_PROBE)
                .timeout(Duration::from_secs(60))
                .run()
                .with_context(|| format!("{}: probing /dev/kvm", vm.name))?
                .stdout;
            let line = line.trim();
            Ok(match line.strip_prefix("ok: ") {
                Some(_) => None,
                None => Some((
                    vm.name.clone(),
                    line.strip_prefix("no: ").unwrap_or(line).to_string(),
                )),
            })
        },
    )?;
    Ok(probed.into_iter().flatten().collect())
}

fn summary(steps: &[StepResult]) -> String {
    if steps.is_empty() {
        return "no steps".into();
    }
    let ran = steps.iter().filter(|s| s.outcome == "done").count();
    let skipped = steps.iter().filter(|s| s.outcome == "skipped").count();
    format!("{ran} run, {skipped} done before")
}

/// The answer file goes where the packstack step reads it, readable by root only (it
/// holds passwords), written whole or not at all. packstack rewrites the file it reads, so
/// lab writes it anew on every `lab up`.
fn remote_answer_file(t: &Target, path: &str, text: &str) -> Result<()> {
    let quoted = crate::runner::quote(path);
    let tmp = crate::runner::quote(&format!("{path}.new"));
    t.command(true, CONNECT)
        .arg(format!("umask 077 && cat >{tmp} && mv {tmp} {quoted}"))
        .stdin(text.as_bytes().to_vec())
        .timeout(Duration::from_secs(60))
        .run()
        .with_context(|| format!("{}: writing the packstack answer file {path}", t.vm))?;
    Ok(())
}

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

/// Inside a VM that should nest: is /dev/kvm there and usable, and does the CPU show
/// vmx/svm. One line: `ok ...` or `no ...`.
const KVM_PROBE: &str = r#"if ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
    echo "no: the CPU shows no vmx/svm flag: the VM's CPU does not expose virtualisation"
elif [ ! -c /dev/kvm ]; then
    echo "no: /dev/kvm is missing (is kvm_intel or kvm_amd loaded in the VM?)"
elif ! { exec 3<>/dev/kvm; } 2>/dev/null; then
    echo "no: /dev/kvm cannot be opened for reading and writing"
else
    echo "ok: /dev/kvm usable, $(grep -owE 'vmx|svm' /proc/cpuinfo | head -n 1) exposed"
fi
"#;

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

/// `lab ready PROFILE`: every VM reachable over SSH, nesting VMs with a usable /dev/kvm,
/// every provisioning step recorded, and for packstack the OpenStack endpoints answering.
pub fn ready(global: &GlobalArgs, args: &ReadyArgs) -> Result<u8> {
    let started = Instant::now();
    let profile = Profile::load(&args.profile)?;
    let lv = Libvirt::open(&global.connect)?;
    let key = key(&profile).map_err(|e| format!("{e:#}"));
    let hint = unreachable_hint(&profile);
    let timeout = Duration::from_secs(args.timeout);
    let instances = profile.instances();
    let mut findings: Vec<Finding> = fanout::each(
        &instances,
        |(vm, _)| vm.clone(),
        |(vm, spec)| Ok(vm_readiness(&lv, &profile, vm, spec, &key, &hint, timeout)),
    )
    .into_iter()
    .zip(&instances)
    // A VM whose readiness could not be told (lab panicked) is not ready.
    .flat_map(|(r, (vm, _))| {
        r.unwrap_or_else(|e| {
            vec![Finding {
                vm: vm.clone(),
                check: "ssh".into(),
                ok: false,
                detail: format!("{e:#}"),
            }]
        })
    })
    .collect();
    if packstack::is_packstack(&profile) {
        let controller = profile
            .instances()
            .into_iter()
            .find(|(_, spec)| matches!(spec.role.as_deref(), Some("controller" | "allinone")))
            .map(|(vm, _)| vm);
        if let Some(vm) = controller {
            let domain = names::domain(&profile.name, &vm);
            match lv.lease(&domain, &names::mac(&profile.name, &vm)) {
                Some(ip) => {
                    for (service, url) in openstack_endpoints(&ip.to_string()) {
                        let (ok, detail) = match http_status(&url, timeout) {
                            Ok(code) if code < 500 => (true, format!("{url}: HTTP {code}")),
                            Ok(code) => (false, format!("{url}: HTTP {code}")),
                            Err(e) => (false, format!("{url}: {e:#}")),
                        };
                        findings.push(Finding {
                            vm: vm.clone(),
                            check: format!("endpoint {service}"),
                            ok,
                            detail,
                        });
                    }
                }
                None => findings.push(Finding {
                    vm: vm.clone(),
                    check: "endpoints".into(),
                    ok: false,
                    detail: "the controller has no IP: the endpoints cannot be asked".into(),
                }),
            }
        }
    }
    let ready = !findings.is_empty() && findings.iter().all(|f| f.ok);
    let report = Readiness {
        profile: profile.name.clone(),
        ready,
        findings,
        ms: started.elapsed().as_millis() as u64,
    };
    if global.json {
        ui::print_json(&report)?;
    } else {
        print!("{}", render(&report));
    }
    Ok(if ready { exit::OK } else { exit::CHECK_FAILED })
}

fn vm_readiness(
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
    match provision::steps_for(profile, vm, role) {
        Ok(steps) if steps.is_empty() => {}
        Ok(steps) => match provision::recorded(remote_shell(&t), &steps, provision::DONE_DIR) {
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

    /// A one-shot HTTP server on the loopback answering `status`.
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
    fn the_kvm_probe_says_what_is_missing() {
        // Run here, where /dev/kvm exists but the CPU flags do not show vmx/svm (or do):
        // whatever this machine is, the probe answers with one verdict line.
        let out = Cmd::new("sh")
            .arg("-s")
            .stdin(KVM_PROBE)
            .run()
            .unwrap()
            .stdout;
        let line = out.trim();
        assert!(
            line.starts_with("ok: ") || line.starts_with("no: "),
            "{line}"
        );
        assert_eq!(out.lines().count(), 1, "{out}");
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
