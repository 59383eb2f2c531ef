//! Published ports (`[[forward]]`) on the real libvirtd under TCG, with a smoke VM serving
//! HTTP (busybox httpd): the host port answers with what the VM serves, `lab status` lists
//! it, `lab up` again changes nothing, a half-made forward is completed, a port someone
//! holds is refused naming them with nothing made, and after `lab down` no rule of lab's
//! remains and the port is free.

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
    format!(
        "name = \"{name}\"\n\
         [network]\nsubnet = \"auto\"\nauto_range = \"10.245.0.0/16\"\n\
         [storage]\nbackend = \"qcow2\"\ndir = \"{}\"\n\
         [base]\nkernel = \"host\"\ninitrd = \"busybox\"\ndisk = \"64MiB\"\n\
         [[vm]]\nname = \"web\"\nmemory = \"256MiB\"\n\
         [[forward]]\nvm = \"web\"\nport = 8080\nhost_port = {host_port}\n",
        images.display()
    )
}

/// `GET /` on 127.0.0.1:`port`; the whole answer, or why there is none.
fn get(port: u16) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The lines of `nft list ruleset` (as a person reads it) that are lab's for `profile`:
/// its rules (by their comment) and its table.
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
    let (down, _) = lab.run(&["down", lab.profile()], 0);
    assert!(
        down.contains(&format!("removed forward 127.0.0.1:{port}->web:8080")),
        "{down}"
    );
    assert_eq!(lab_rules(&lab.name), Vec::<String>::new());
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
