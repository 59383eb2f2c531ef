//! lab's reading of libvirt while others change it, against the running libvirtd.

use virt::connect::Connect;

/// A domain that ends between lab's listing and its reading (a transient domain, another
/// tool's, or a test's) is not there to plan around: no error. Seen in CI, where
/// `lab up --dry-run` failed on a check domain of another test that had just ended.
#[test]
fn a_domain_gone_since_it_was_listed_is_left_out_not_an_error() {
    virt::error::clear_error_callback();
    let conn = Connect::open(Some("qemu:///system")).expect("libvirtd runs (see README)");
    let name = format!("labtest-gone{}", std::process::id());
    // Firmware only, no disk: it runs until destroyed.
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>\
         <vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices/></domain>"
    );
    let dom = conn
        .create_domain_xml(&xml, 0)
        .expect("a transient domain starts");
    let seen = lab::observe::observe_domain(&dom).unwrap();
    let seen = seen.expect("a running domain is observed");
    assert_eq!(seen.name, name);
    assert!(seen.running);
    assert_eq!(seen.owner, None, "not lab's");

    // It ends; lab holds the handle the listing gave it.
    dom.destroy().unwrap();
    assert_eq!(lab::observe::observe_domain(&dom).unwrap(), None);
}

/// The same for a network: a transient one stopped after the listing is left out.
#[test]
fn a_network_gone_since_it_was_listed_is_left_out_not_an_error() {
    virt::error::clear_error_callback();
    let conn = Connect::open(Some("qemu:///system")).expect("libvirtd runs (see README)");
    let pid = std::process::id();
    // Isolated, no address: no firewall rules, no DHCP.
    let xml = format!(
        "<network><name>labtest-gone{pid}</name><bridge name='labgone{}'/></network>",
        pid % 100_000
    );
    let net = conn
        .create_network_xml(&xml)
        .expect("a transient network starts");
    let seen = lab::libvirt::network_xml(&net).unwrap();
    assert!(seen.is_some_and(|x| x.contains(&format!("labtest-gone{pid}"))));
    net.destroy().unwrap();
    assert_eq!(lab::libvirt::network_xml(&net).unwrap(), None);
}
