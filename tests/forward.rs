//! Published ports (`[[forward]]`) on the real libvirtd under TCG, with a smoke VM serving
//! HTTP (busybox httpd): the host port answers with what the VM serves, `lab status` lists
//! it, `lab up` again changes nothing, a half-made forward is completed, a port someone
//! holds is refused naming them with nothing made, and after `lab down` no rule of lab's
//! remains and the port is free. On a host address other machines reach (one of the
//! host's, or 0.0.0.0), "another machine" is a network namespace joined to the host by a
//! veth pair: it gets the page, libvirt's rewritten chains are repaired by the next
//! `lab up`/`lab start`, a killed `lab up` leaves the forward whole or absent, and after
//! `lab down` it gets nothing and no rule of lab's is left in libvirt's chains either.

#[path = "support/lab_cli.rs"]
mod lab_cli;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use lab_cli::Lab;

/// A port free on the host's loopback now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn profile(name: &str, images: &std::path::Path, host_port: u16) -> String {
    profile_on(name, images, "127.0.0.1", host_port)
}

fn profile_on(name: &str, images: &std::path::Path, host_address: &str, host_port: u16) -> String {
    format!(
        "name = \"{name}\"\n\
         [network]\nsubnet = \"auto\"\nauto_range = \"10.245.0.0/16\"\n\
         [storage]\nbackend = \"qcow2\"\ndir = \"{}\"\n\
         [base]\nkernel = \"host\"\ninitrd = \"busybox\"\ndisk = \"64MiB\"\n\
         [[vm]]\nname = \"web\"\nmemory = \"256MiB\"\n\
         [[forward]]\nvm = \"web\"\nport = 8080\nhost_port = {host_port}\n\
         host_address = \"{host_address}\"\n",
        images.display()
    )
}

/// `GET /` on 127.0.0.1:`port`; the whole answer, or why there is none.
fn get(port: u16) -> Result<String, String> {
    get_at(Ipv4Addr::LOCALHOST, port)
}

/// `GET /` on `addr:port` from the host itself.
fn get_at(addr: Ipv4Addr, port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The lines of `nft list ruleset` (as a person reads it) that are lab's for `profile`:
/// its rules (by their comment), in its table and in libvirt's chains.
fn lab_rules(profile: &str) -> Vec<String> {
    let out = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("comment \"lab {profile}/")))
        .map(|l| l.trim().to_string())
        .collect()
}

/// `lab down` says it removed the forward of `host` (`ADDRESS:PORT`) to web:8080, and no
/// rule of lab's for the lab is left: not in its table (gone too), not in libvirt's chains
/// as iptables reads them.
fn down_leaves_no_rule(lab: &Lab, host: &str) {
    let (down, _) = lab.run(&["down", lab.profile()], 0);
    assert!(
        down.contains(&format!("removed forward {host}->web:8080")),
        "{down}"
    );
    assert_eq!(lab_rules(&lab.name), Vec::<String>::new());
    assert!(!lab_table(&lab.name));
    for chain in ["LIBVIRT_FWI", "LIBVIRT_FWO"] {
        let listing = iptables_chain(chain);
        assert!(
            !listing.contains(&format!("lab {}/", lab.name)),
            "{listing}"
        );
    }
}

/// Whether lab's table of `profile` exists.
fn lab_table(profile: &str) -> bool {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == format!("table ip lab-{profile}"))
}

#[test]
fn a_forward_answers_with_what_the_vm_serves_and_is_gone_after_down() {
    let port = free_port();
    let lab = Lab::new("fw", |name, images| profile(name, images, port));
    lab.require_host_program("dropbear", "dropbear-bin");

    let (plan, _) = lab.run(&["up", lab.profile(), "--dry-run"], 0);
    assert!(
        plan.contains(&format!("127.0.0.1:{port}->web:8080")),
        "{plan}"
    );
    lab.run(&["up", lab.profile()], 0);
    serve(&lab);
    let answer = get(port).unwrap();
    assert!(answer.contains("served-by-web"), "{answer}");

    // lab status lists it, whole.
    let status = lab.json(&["status", &lab.name], 0);
    let forwards = status[0]["forwards"].as_array().unwrap();
    assert_eq!(forwards.len(), 1, "{status}");
    assert_eq!(forwards[0]["host"], format!("127.0.0.1:{port}"), "{status}");
    assert_eq!(forwards[0]["vm"], "web", "{status}");
    assert_eq!(forwards[0]["port"], 8080, "{status}");
    assert_eq!(forwards[0]["whole"], true, "{status}");
    let (text, _) = lab.run(&["status", &lab.name], 0);
    assert!(
        text.contains(&format!("forward 127.0.0.1:{port} -> web:8080")),
        "{text}"
    );

    // lab up again changes nothing: the forward is kept, its rules the same ones.
    let before = lab_rules(&lab.name);
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(lab_table(&lab.name));
    let again = lab.json(&["up", lab.profile(), "--dry-run"], 0);
    assert_eq!(again["actions"].as_array().unwrap().len(), 0, "{again}");
    assert!(
        again["unchanged"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["object"] == "forward" && a["op"] == "keep"),
        "{again}"
    );
    lab.run(&["up", lab.profile()], 0);
    assert_eq!(lab_rules(&lab.name), before);

    // Half a forward (as a killed run or a person's hand may leave it): lab status says
    // so, the next lab up makes it whole again.
    let handle = Command::new("nft")
        .args([
            "-a",
            "list",
            "chain",
            "ip",
            &format!("lab-{}", lab.name),
            "postrouting",
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&handle.stdout).into_owned();
    let handle = listing
        .lines()
        .filter(|l| l.contains("masquerade"))
        .find_map(|l| l.split("# handle ").nth(1))
        .unwrap_or_else(|| panic!("{listing}"))
        .trim()
        .to_string();
    let del = Command::new("nft")
        .args([
            "delete",
            "rule",
            "ip",
            &format!("lab-{}", lab.name),
            "postrouting",
            "handle",
            &handle,
        ])
        .status()
        .unwrap();
    assert!(del.success());
    assert!(get(port).is_err(), "a forward without masquerade answered");
    let status = lab.json(&["status", &lab.name], 0);
    assert_eq!(status[0]["forwards"][0]["whole"], false, "{status}");
    let (plan, _) = lab.run(&["up", lab.profile(), "--dry-run"], 0);
    assert!(plan.contains("half made"), "{plan}");
    lab.run(&["up", lab.profile()], 0);
    assert_eq!(lab_rules(&lab.name).len(), 2);
    let answer = get(port).unwrap();
    assert!(answer.contains("served-by-web"), "{answer}");

    // lab down: the forward goes with the lab, the table too; the port is free.
    down_leaves_no_rule(&lab, &format!("127.0.0.1:{port}"));
    assert!(
        get(port).is_err(),
        "port {port} still answers after lab down"
    );
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
}

#[test]
fn a_forward_to_a_port_someone_holds_is_refused_naming_them() {
    let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = held.local_addr().unwrap().port();
    let lab = Lab::new("fwt", |name, images| profile(name, images, port));
    let t = Instant::now();
    let (_, err) = lab.run(&["up", lab.profile()], 2);
    assert!(
        err.contains(&format!(
            "port 127.0.0.1:{port} is taken by process {}",
            std::process::id()
        )),
        "{err}"
    );
    // The profile's line of the forward.
    assert!(err.contains(&format!("{}:18", lab.profile())), "{err}");
    assert!(err.contains("nothing was made"), "{err}");
    lab.assert_nothing_made();
    assert_eq!(lab_rules(&lab.name), Vec::<String>::new());
    assert!(!lab_table(&lab.name));
    println!("refused in {} ms", t.elapsed().as_millis());
    drop(held);
}

/// "Another machine": a network namespace joined to the host by a veth pair, addresses in
/// a /30 of 198.18.0.0/15 (benchmark space: no lab subnet is allocated there, lab's
/// default range is 10.213.0.0/16 and these tests' 10.245.0.0/16). Removed when dropped,
/// a panicking test included.
struct OtherMachine {
    ns: String,
    host_if: String,
    /// The host's end, an address of the host.
    host_addr: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

impl OtherMachine {
    /// `slot`: which /30 of this process's (one per test).
    fn new(slot: u8) -> OtherMachine {
        let id = std::process::id() % 10_000;
        let net = 4 * slot;
        let third = (id % 250) as u8;
        let m = OtherMachine {
            ns: format!("labt{id}-{slot}"),
            host_if: format!("lt{id}h{slot}"),
            host_addr: Ipv4Addr::new(198, 18, third, net + 1),
        };
        let peer_if = format!("lt{id}p{slot}");
        let peer_addr = Ipv4Addr::new(198, 18, third, net + 2);
        ip(&["netns", "add", &m.ns]);
        ip(&[
            "link", "add", &m.host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &m.ns]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", m.host_addr),
            "dev",
            &m.host_if,
        ]);
        ip(&["link", "set", &m.host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &m.ns, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{peer_addr}/30"), "dev", &peer_if]);
        inside(&["link", "set", &peer_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        // Every other address of the host is reached through it, as on a LAN.
        inside(&["route", "add", "default", "via", &m.host_addr.to_string()]);
        m
    }

    /// `get` until it answers, for at most `wait`; the last answer.
    fn get_within(&self, addr: Ipv4Addr, port: u16, wait: Duration) -> String {
        let start = Instant::now();
        loop {
            match self.get(addr, port) {
                Ok(page) => return page,
                Err(e) if start.elapsed() > wait => panic!("{addr}:{port} after {wait:?}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// `GET /` on `addr:port` from inside the namespace (curl); the page or why not.
    fn get(&self, addr: Ipv4Addr, port: u16) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-sS", "--max-time", "10"])
            .arg(format!("http://{addr}:{port}/"))
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for OtherMachine {
    fn drop(&mut self) {
        // The namespace takes its end of the pair with it; the host's end goes with it.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The host's address on its default route (another address than the veth's).
fn default_route_address() -> Ipv4Addr {
    let out = Command::new("ip")
        .args(["-4", "-o", "route", "get", "192.0.2.1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "src")
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no source address in {text}"))
}

/// libvirt's chain `chain` as iptables (which libvirt runs) reads it.
fn iptables_chain(chain: &str) -> String {
    let out = Command::new("iptables")
        .args(["-S", chain])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "iptables cannot read libvirt's chain {chain}: {out:?}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Serve a page from the lab's VM `web` on its port 8080.
fn serve(lab: &Lab) {
    lab.run(
        &[
            "ssh",
            lab.profile(),
            "web",
            "--",
            "mkdir -p /tmp/www && echo served-by-web > /tmp/www/index.html && busybox httpd -p 8080 -h /tmp/www",
        ],
        0,
    );
}

#[test]
fn a_forward_on_a_host_address_answers_another_machine_until_down() {
    let other = OtherMachine::new(0);
    let port = free_port();
    let addr = other.host_addr.to_string();
    let lab = Lab::new("fwl", |name, images| profile_on(name, images, &addr, port));
    lab.require_host_program("dropbear", "dropbear-bin");
    lab.run(&["up", lab.profile()], 0);
    serve(&lab);

    // From the other machine, and from the host itself, on that address.
    let page = other.get(other.host_addr, port).unwrap();
    assert!(page.contains("served-by-web"), "{page}");
    let page = get_at(other.host_addr, port).unwrap();
    assert!(page.contains("served-by-web"), "{page}");
    // Not on the host's other addresses.
    assert!(other.get(default_route_address(), port).is_err());
    let rules = lab_rules(&lab.name);
    assert_eq!(rules.len(), 7, "{rules:#?}");
    // libvirt's iptables still reads its chains, lab's accept above libvirt's reject for
    // the lab's bridge in each.
    let bridge = lab::names::bridge(&lab.name);
    for (chain, dir) in [("LIBVIRT_FWI", "-o"), ("LIBVIRT_FWO", "-i")] {
        let listing = iptables_chain(chain);
        let at = |what: &str| listing.lines().position(|l| l.contains(what));
        let accept = at(&format!("--comment \"lab {}/web:8080", lab.name));
        let reject = at(&format!("{dir} {bridge} -j REJECT"));
        assert!(
            accept.is_some() && reject.is_some() && accept < reject,
            "{listing}"
        );
    }
    let status = lab.json(&["status", &lab.name], 0);
    assert_eq!(
        status[0]["forwards"][0]["host"],
        format!("{addr}:{port}"),
        "{status}"
    );
    assert_eq!(status[0]["forwards"][0]["whole"], true, "{status}");

    // A killed lab up: the forward taken away whole, `lab up` makes it again while the
    // test looks at the ruleset as fast as it can, then is killed the moment it shows:
    // every look sees none of its rules or all seven.
    let handles: Vec<(String, String, String)> = lab_handles(&lab.name);
    let mut script = String::new();
    for (table, chain, handle) in &handles {
        script.push_str(&format!("delete rule ip {table} {chain} handle {handle}\n"));
    }
    let del = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut del = del;
        del.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(del.wait().unwrap().success(), "{script}");
    }
    assert_eq!(lab_rules(&lab.name).len(), 0);
    assert!(other.get(other.host_addr, port).is_err());
    let mut up = lab
        .cmd(&["up", lab.profile()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let n = lab_rules(&lab.name).len();
        seen.push(n);
        if n > 0 || up.try_wait().unwrap().is_some() {
            break;
        }
    }
    let _ = up.kill();
    let _ = up.wait();
    assert!(seen.iter().all(|n| *n == 0 || *n == 7), "{seen:?}");
    println!(
        "{} looks at the ruleset while lab up ran: {seen:?}",
        seen.len()
    );
    lab.run(&["up", lab.profile()], 0);
    assert_eq!(lab_rules(&lab.name).len(), 7);
    let page = other.get(other.host_addr, port).unwrap();
    assert!(page.contains("served-by-web"), "{page}");

    // lab down: the other machine gets nothing, and no rule of lab's is left anywhere.
    down_leaves_no_rule(&lab, &format!("{addr}:{port}"));
    assert!(other.get(other.host_addr, port).is_err());
}

/// (table, chain, handle) of every rule of lab's for `profile` (`nft -a list ruleset`).
fn lab_handles(profile: &str) -> Vec<(String, String, String)> {
    let out = Command::new("nft")
        .args(["-a", "list", "ruleset"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (mut table, mut chain) = (String::new(), String::new());
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["table", _, name, ..] => table = name.to_string(),
            ["chain", name, ..] => chain = name.to_string(),
            _ if line.contains(&format!("comment \"lab {profile}/")) => {
                let handle = line.rsplit("# handle ").next().unwrap().trim().to_string();
                found.push((table.clone(), chain.clone(), handle));
            }
            _ => {}
        }
    }
    found
}

#[test]
fn a_forward_on_all_addresses_survives_libvirt_rewriting_its_chains() {
    let other = OtherMachine::new(1);
    let port = free_port();
    let lab = Lab::new("fwa", |name, images| {
        profile_on(name, images, "0.0.0.0", port)
    });
    lab.require_host_program("dropbear", "dropbear-bin");
    lab.run(&["up", lab.profile()], 0);
    serve(&lab);
    // Any address of the host: the other machine's link, the host's address on its
    // default route (reached through the other machine's default route), loopback.
    for addr in [other.host_addr, default_route_address()] {
        let page = other.get(addr, port).unwrap();
        assert!(page.contains("served-by-web"), "{addr}: {page}");
    }
    let page = get(port).unwrap();
    assert!(page.contains("served-by-web"), "{page}");
    // The VMs' own traffic to the host on that port is not taken: the VM reaches its
    // gateway's port 8080, where nothing listens, and is refused (not sent to itself).
    let gateway = lab.json(&["status", &lab.name], 0)[0]["vms"][0]["ip"]
        .as_str()
        .unwrap()
        .rsplit_once('.')
        .map(|(net, _)| format!("{net}.1"))
        .unwrap();
    let (out, _) = lab.run(
        &[
            "ssh",
            lab.profile(),
            "web",
            "--",
            &format!("busybox wget -q -T 5 -O - http://{gateway}:{port}/ 2>&1; echo exit=$?"),
        ],
        0,
    );
    assert!(
        !out.contains("served-by-web") && !out.contains("exit=0"),
        "{out}"
    );

    // libvirt restarts the lab's network: its rules go back on top of its chains, lab's
    // accepts below them decide nothing, and the bridge is new.
    let net = format!("lab-{}", lab.name);
    for op in ["net-destroy", "net-start"] {
        let s = Command::new("virsh")
            .args(["-c", "qemu:///system", op, &net])
            .output()
            .unwrap();
        assert!(s.status.success(), "{s:?}");
    }
    let status = lab.json(&["status", &lab.name], 0);
    assert_eq!(status[0]["forwards"][0]["whole"], false, "{status}");
    let missing = status[0]["forwards"][0]["missing"].to_string();
    assert!(missing.contains("filter LIBVIRT_FWI"), "{status}");
    let (text, _) = lab.run(&["status", &lab.name], 0);
    assert!(
        text.contains("not whole (missing in filter LIBVIRT_FWI"),
        "{text}"
    );
    let (plan, _) = lab.run(&["up", lab.profile(), "--dry-run"], 0);
    assert!(plan.contains("libvirt"), "{plan}");
    // lab up puts the VM back on its bridge and the forward back on top. The bridge's
    // port of the VM passes STP's learning state first (a second or two, measured).
    lab.run(&["up", lab.profile()], 0);
    let page = other.get_within(other.host_addr, port, Duration::from_secs(30));
    assert!(page.contains("served-by-web"), "{page}");
    let status = lab.json(&["status", &lab.name], 0);
    assert_eq!(status[0]["forwards"][0]["whole"], true, "{status}");
    // libvirt's reject put above lab's accept once more by hand, and lab start repairs it.
    let bridge = lab::names::bridge(&lab.name);
    ip_tables(&["-I", "LIBVIRT_FWI", "1", "-o", &bridge, "-j", "REJECT"]);
    assert!(other.get(other.host_addr, port).is_err());
    lab.run(&["start", lab.profile()], 0);
    let page = other.get(other.host_addr, port).unwrap();
    assert!(page.contains("served-by-web"), "{page}");
    ip_tables(&["-D", "LIBVIRT_FWI", "-o", &bridge, "-j", "REJECT"]);

    down_leaves_no_rule(&lab, &format!("0.0.0.0:{port}"));
    assert!(other.get(other.host_addr, port).is_err());
    assert!(get(port).is_err());
}

fn ip_tables(args: &[&str]) {
    let out = Command::new("iptables").args(args).output().unwrap();
    assert!(out.status.success(), "iptables {args:?}: {out:?}");
}

#[test]
fn a_forward_on_an_address_the_host_lacks_or_taken_there_is_refused() {
    let other = OtherMachine::new(2);
    // 198.18.0.0/15 address nobody has.
    let lab = Lab::new("fwn", |name, images| {
        profile_on(name, images, "198.19.255.254", 18080)
    });
    let (_, err) = lab.run(&["up", lab.profile()], 2);
    assert!(
        err.contains("198.19.255.254 is not an address of this host (its addresses: "),
        "{err}"
    );
    assert!(err.contains(&other.host_addr.to_string()), "{err}");
    assert!(err.contains("nothing was made"), "{err}");
    lab.assert_nothing_made();
    assert!(!lab_table(&lab.name));
    drop(lab);
    // A port held on that address, then on all addresses while publishing 0.0.0.0.
    let held = TcpListener::bind((other.host_addr, 0)).unwrap();
    let port = held.local_addr().unwrap().port();
    for addr in [other.host_addr.to_string(), "0.0.0.0".to_string()] {
        let lab = Lab::new("fwh", |name, images| profile_on(name, images, &addr, port));
        let (_, err) = lab.run(&["up", lab.profile()], 2);
        assert!(
            err.contains(&format!(
                "port {addr}:{port} is taken by process {} (",
                std::process::id()
            )) && err.contains(&format!("listening on {}:{port}", other.host_addr)),
            "{err}"
        );
        lab.assert_nothing_made();
        assert_eq!(lab_rules(&lab.name), Vec::<String>::new());
    }
    drop(held);
}
