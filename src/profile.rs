//! Lab profiles: the presenter's description of a demo lab, in TOML.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::usage;
use crate::size::ByteSize;

/// Where lab keeps images when a profile does not say.
pub const DEFAULT_IMAGE_DIR: &str = "/var/lib/lab/images";

/// The private range `subnet = "auto"` picks a /24 from, unless the profile names another.
pub const DEFAULT_AUTO_RANGE: &str = "10.213.0.0/16";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub network: NetworkSpec,
    #[serde(default)]
    pub storage: StorageSpec,
    #[serde(default)]
    pub base: BaseSpec,
    /// Variables handed to the kickstart template.
    #[serde(default)]
    pub vars: BTreeMap<String, toml::Value>,
    #[serde(rename = "vm", default)]
    pub vms: Vec<VmSpec>,
    #[serde(rename = "provision", default)]
    pub provision: Vec<ProvisionStep>,
    /// What "ready to show" means beyond SSH and the steps: commands in the VMs that must
    /// succeed (`lab ready`).
    #[serde(rename = "ready", default)]
    pub ready: Vec<ReadyProbe>,
    /// Published ports: a VM's service reachable on a port of the host (`lab up` makes
    /// them, `lab down` removes them).
    #[serde(rename = "forward", default)]
    pub forwards: Vec<ForwardSpec>,
    /// Where this profile was read from (not part of the file).
    #[serde(skip)]
    pub source: ProfileSource,
    /// How it was named on the command line (a name or a path), for the commands lab
    /// suggests (not part of the file).
    #[serde(skip)]
    pub arg: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "kebab-case")]
pub enum ProfileSource {
    #[default]
    BuiltIn,
    File(PathBuf),
}

impl fmt::Display for ProfileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileSource::BuiltIn => f.write_str("built into lab"),
            ProfileSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    #[serde(default)]
    pub subnet: SubnetSpec,
    #[serde(default)]
    pub mode: NetMode,
    /// DNS domain for the VMs' names; defaults to `<profile>.lab`.
    #[serde(default)]
    pub domain: Option<String>,
    /// The range `subnet = "auto"` picks from.
    #[serde(default = "default_auto_range")]
    pub auto_range: Ipv4Net,
}

fn default_auto_range() -> Ipv4Net {
    DEFAULT_AUTO_RANGE.parse().expect("valid default range")
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            subnet: SubnetSpec::Auto,
            mode: NetMode::Isolated,
            domain: None,
            auto_range: default_auto_range(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubnetSpec {
    #[default]
    Auto,
    Fixed(Ipv4Net),
}

impl Serialize for SubnetSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SubnetSpec::Auto => s.serialize_str("auto"),
            SubnetSpec::Fixed(net) => s.serialize_str(&net.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for SubnetSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "auto" {
            return Ok(SubnetSpec::Auto);
        }
        let net: Ipv4Net = text.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid subnet {text:?}: write \"auto\" or an IPv4 CIDR such as \"10.213.7.0/24\""
            ))
        })?;
        if net.prefix_len() > 29 {
            return Err(serde::de::Error::custom(format!(
                "subnet {text} is too small for a lab: use a /29 or larger"
            )));
        }
        if net != net.trunc() {
            return Err(serde::de::Error::custom(format!(
                "subnet {text} has host bits set: did you mean {}?",
                net.trunc()
            )));
        }
        Ok(SubnetSpec::Fixed(net))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetMode {
    /// No route out: the lab cannot disturb the LAN, the LAN cannot reach the lab.
    #[default]
    Isolated,
    Nat,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSpec {
    #[serde(default)]
    pub backend: StorageBackend,
    /// Volume group of the thin pool (lvm-thin, auto).
    #[serde(default)]
    pub vg: Option<String>,
    /// Thin pool LV name inside `vg`.
    #[serde(default)]
    pub pool: Option<String>,
    /// Directory for qcow2 images.
    #[serde(default = "default_image_dir")]
    pub dir: PathBuf,
}

fn default_image_dir() -> PathBuf {
    PathBuf::from(DEFAULT_IMAGE_DIR)
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            backend: StorageBackend::Auto,
            vg: None,
            pool: None,
            dir: default_image_dir(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageBackend {
    /// A thin pool when `vg`/`pool` name one that exists, qcow2 otherwise.
    #[default]
    Auto,
    LvmThin,
    Qcow2,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSpec {
    /// Operating system of the base (for kickstart validation), e.g. "centos-stream9".
    #[serde(default)]
    pub os: Option<String>,
    /// A kickstart template in `kickstart/`.
    #[serde(default)]
    pub kickstart: Option<String>,
    /// Install source: a local ISO path or an install tree URL with `.treeinfo`.
    #[serde(default)]
    pub install: Option<String>,
    /// A disk image to use as the base instead of an install: a local path, or an
    /// `http(s)://` URL downloaded once into lab's image cache (`lab cache list`).
    #[serde(default)]
    pub image: Option<String>,
    /// The image's checksum, `sha256:HEX` or `sha512:HEX`.
    #[serde(default)]
    pub checksum: Option<String>,
    /// The checksum file the distribution publishes beside the image (Debian's
    /// `SHA512SUMS`, Fedora's `CHECKSUM`), fetched each time so a `latest` image stays
    /// verifiable.
    #[serde(default)]
    pub checksum_url: Option<String>,
    /// Give every VM a NoCloud seed lab makes: its name, the lab's /etc/hosts, keys, a
    /// fresh machine-id and host key, growpart, the profile's user-data.
    #[serde(default)]
    pub cloud_init: bool,
    /// cloud-config (YAML) merged into the user-data lab makes, for every VM.
    #[serde(default)]
    pub user_data: Option<String>,
    /// Direct kernel boot: a kernel path, or "host" for the running host's kernel.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Direct kernel boot: an initrd path, or "busybox" for the one lab makes itself.
    #[serde(default)]
    pub initrd: Option<String>,
    /// Extra kernel command line for direct boot.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Size of the base disk.
    #[serde(default = "default_base_disk")]
    pub disk: ByteSize,
}

fn default_base_disk() -> ByteSize {
    ByteSize::gib(40)
}

impl Default for BaseSpec {
    fn default() -> Self {
        BaseSpec {
            os: None,
            kickstart: None,
            install: None,
            image: None,
            checksum: None,
            checksum_url: None,
            cloud_init: false,
            user_data: None,
            kernel: None,
            initrd: None,
            cmdline: None,
            disk: default_base_disk(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: String,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default = "one")]
    pub vcpus: u32,
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Disk size; the base's size when unset.
    #[serde(default)]
    pub disk: Option<ByteSize>,
    /// Expose vmx/svm so the VM can run KVM itself.
    #[serde(default)]
    pub nested: bool,
    #[serde(default)]
    pub role: Option<String>,
    /// cloud-config (YAML) merged into this VM's user-data, after `[base] user_data`.
    #[serde(default)]
    pub user_data: Option<String>,
    /// A display for virt-viewer and virt-manager; headless when unset.
    #[serde(default)]
    pub graphics: Option<GraphicsKind>,
}

/// One `[[forward]]`: `host_address:host_port` on the host reaches `vm:port`. Ports are
/// read as plain integers so that one out of range is refused by lab, naming the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardSpec {
    pub vm: String,
    pub port: i64,
    pub host_port: i64,
    #[serde(default = "default_host_address")]
    pub host_address: String,
    #[serde(default)]
    pub proto: ForwardProto,
}

fn default_host_address() -> String {
    "127.0.0.1".into()
}

/// The transport of a `[[forward]]`: TCP only, the services a demo shows (a web UI, an
/// API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardProto {
    #[default]
    Tcp,
}

impl ForwardProto {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardProto::Tcp => "tcp",
        }
    }
}

/// A `[[forward]]` once validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Forward {
    pub vm: String,
    pub port: u16,
    pub host_address: std::net::Ipv4Addr,
    pub host_port: u16,
    pub proto: ForwardProto,
}

/// The display protocol of `[[vm]] graphics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphicsKind {
    Spice,
    Vnc,
}

impl GraphicsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GraphicsKind::Spice => "spice",
            GraphicsKind::Vnc => "vnc",
        }
    }
}

fn one() -> u32 {
    1
}

fn default_memory() -> ByteSize {
    ByteSize::gib(1)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionStep {
    pub name: String,
    /// Shell command run in the VM over SSH.
    pub run: String,
    /// Run on VMs of this role only.
    #[serde(default)]
    pub role: Option<String>,
    /// Run on this VM only.
    #[serde(default)]
    pub vm: Option<String>,
    /// Seconds before the step is called hung.
    #[serde(default = "default_step_timeout")]
    pub timeout: u64,
}

fn default_step_timeout() -> u64 {
    1800
}

/// A readiness probe: a shell command in a VM that exits 0 when the demo works (a page
/// that comes through the whole stack, say).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadyProbe {
    pub name: String,
    /// Shell command run in the VM over SSH, its `{{ vars }}` filled in as in steps.
    pub run: String,
    /// Run on VMs of this role.
    #[serde(default)]
    pub role: Option<String>,
    /// Run on this VM.
    #[serde(default)]
    pub vm: Option<String>,
    /// Seconds the probe may take.
    #[serde(default = "default_probe_timeout")]
    pub timeout: u64,
}

fn default_probe_timeout() -> u64 {
    60
}

/// The profiles shipped inside the binary.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("smoke", include_str!("../profiles/smoke.toml")),
    (
        "packstack-aio",
        include_str!("../profiles/packstack-aio.toml"),
    ),
    (
        "packstack-multinode",
        include_str!("../profiles/packstack-multinode.toml"),
    ),
    (
        "debian-stack",
        include_str!("../profiles/debian-stack.toml"),
    ),
];

/// The directories searched for a profile name, in order, before the built-in ones.
pub fn search_dirs() -> Vec<PathBuf> {
    crate::dirs::search_dirs("profiles")
}

/// A profile argument is a path when it has a slash or ends in `.toml`; else a name.
fn is_path(arg: &str) -> bool {
    arg.contains('/') || arg.ends_with(".toml")
}

impl Profile {
    /// Whether the profile boots its VMs straight from a kernel and initrd lab makes.
    pub fn direct_boot(&self) -> bool {
        self.base.kernel.is_some()
    }

    /// The lab's DNS domain: `[network] domain`, else `PROFILE.lab`.
    pub fn domain(&self) -> String {
        self.network
            .domain
            .clone()
            .unwrap_or_else(|| format!("{}.lab", self.name))
    }

    /// Find and load a profile by name (searched) or path (taken as is).
    pub fn load(arg: &str) -> anyhow::Result<Profile> {
        Profile::load_from(arg, &search_dirs())
    }

    pub fn load_from(arg: &str, dirs: &[PathBuf]) -> anyhow::Result<Profile> {
        let mut profile = Profile::find(arg, dirs)?;
        profile.arg = Some(arg.to_string());
        Ok(profile)
    }

    fn find(arg: &str, dirs: &[PathBuf]) -> anyhow::Result<Profile> {
        if is_path(arg) {
            let path = PathBuf::from(arg);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| usage(format!("profile {}: {e}", path.display())))?;
            return Profile::parse(&text, ProfileSource::File(path));
        }
        for dir in dirs {
            let path = dir.join(format!("{arg}.toml"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                return Profile::parse(&text, ProfileSource::File(path));
            }
        }
        if let Some((_, text)) = BUILT_IN.iter().find(|(name, _)| *name == arg) {
            return Profile::parse(text, ProfileSource::BuiltIn);
        }
        let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        let known: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
        Err(usage(format!(
            "no profile named {arg:?}: looked in {} and the built-in profiles ({})",
            searched.join(", "),
            known.join(", ")
        )))
    }

    /// Parse and validate profile text; errors name the file, line and key.
    pub fn parse(text: &str, source: ProfileSource) -> anyhow::Result<Profile> {
        let label = match &source {
            ProfileSource::BuiltIn => "built-in profile".to_string(),
            ProfileSource::File(p) => p.display().to_string(),
        };
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| usage(format_toml_error(&label, text, None, &e)))?;
        let mut profile: Profile = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            usage(format_toml_error(&label, text, Some(&path), e.inner()))
        })?;
        profile.source = source;
        profile.validate(text).map_err(|(key, msg)| {
            usage(format!("{label}:{}: {key}: {msg}", line_of_key(text, &key)))
        })?;
        Ok(profile)
    }

    /// Checks serde cannot express. The error is (key path, message). Relative paths in
    /// `[base]` are taken relative to the profile file and made absolute here.
    fn validate(&mut self, _text: &str) -> Result<(), (String, String)> {
        check_name("name", &self.name)?;
        if self.vms.is_empty() {
            return Err(("vm".into(), "a profile needs at least one [[vm]]".into()));
        }
        let mut seen = BTreeSet::new();
        for (i, vm) in self.vms.iter().enumerate() {
            let key = |field: &str| format!("vm[{i}].{field}");
            check_name(&key("name"), &vm.name)?;
            if vm.count == 0 {
                return Err((key("count"), "count must be 1 or more".into()));
            }
            if vm.count > 64 {
                return Err((
                    key("count"),
                    format!(
                        "count {} is more than a laptop lab holds (64 at most)",
                        vm.count
                    ),
                ));
            }
            if vm.vcpus == 0 {
                return Err((key("vcpus"), "vcpus must be 1 or more".into()));
            }
            if vm.memory.bytes() < ByteSize::mib(64).bytes() {
                return Err((
                    key("memory"),
                    format!(
                        "{} is too little memory for a VM (64MiB at least)",
                        vm.memory
                    ),
                ));
            }
            if let Some(disk) = vm.disk
                && disk.bytes() < ByteSize::mib(16).bytes()
            {
                return Err((
                    key("disk"),
                    format!("{disk} is too small a disk (16MiB at least)"),
                ));
            }
            if vm.count == 1 {
                if !seen.insert(vm.name.clone()) {
                    return Err((key("name"), format!("duplicate VM name {:?}", vm.name)));
                }
            } else {
                for n in 1..=vm.count {
                    let instance = format!("{}{n}", vm.name);
                    if !seen.insert(instance.clone()) {
                        return Err((
                            key("name"),
                            format!(
                                "VM name {instance:?} (from {:?} with count = {}) is used twice",
                                vm.name, vm.count
                            ),
                        ));
                    }
                }
            }
        }
        let roles: BTreeSet<&str> = self.vms.iter().filter_map(|v| v.role.as_deref()).collect();
        for (i, step) in self.provision.iter().enumerate() {
            let key = |field: &str| format!("provision[{i}].{field}");
            if step.name.trim().is_empty() {
                return Err((key("name"), "a provisioning step needs a name".into()));
            }
            if step.name == crate::guest::identity::STEP {
                return Err((
                    key("name"),
                    format!(
                        "{:?} is lab's own step (the VM identity, recorded in {}/{0}):                          name this step otherwise",
                        step.name,
                        crate::guest::steps::DONE_DIR
                    ),
                ));
            }
            if let Some(role) = &step.role
                && !roles.contains(role.as_str())
            {
                return Err((key("role"), format!("no VM has role {role:?}")));
            }
            if let Some(vm) = &step.vm
                && !seen.contains(vm)
            {
                return Err((key("vm"), format!("no VM is named {vm:?}")));
            }
            if step.timeout == 0 {
                return Err((key("timeout"), "timeout must be 1 second or more".into()));
            }
        }
        for (i, probe) in self.ready.iter().enumerate() {
            let key = |field: &str| format!("ready[{i}].{field}");
            if probe.name.trim().is_empty() {
                return Err((key("name"), "a readiness probe needs a name".into()));
            }
            if probe.run.trim().is_empty() {
                return Err((key("run"), "a readiness probe needs a command".into()));
            }
            if let Some(role) = &probe.role
                && !roles.contains(role.as_str())
            {
                return Err((key("role"), format!("no VM has role {role:?}")));
            }
            if let Some(vm) = &probe.vm
                && !seen.contains(vm)
            {
                return Err((key("vm"), format!("no VM is named {vm:?}")));
            }
            if probe.timeout == 0 {
                return Err((key("timeout"), "timeout must be 1 second or more".into()));
            }
        }
        self.validate_forwards(&seen)?;
        if let Some(domain) = &self.network.domain
            && !valid_dns_name(domain)
        {
            return Err((
                "network.domain".into(),
                format!("{domain:?} is not a DNS domain name"),
            ));
        }
        for (key, value) in [
            ("storage.vg", &self.storage.vg),
            ("storage.pool", &self.storage.pool),
        ] {
            if let Some(v) = value
                && !valid_lvm_name(v)
            {
                return Err((
                    key.into(),
                    format!(
                        "{v:?} is not an LVM name (letters, digits, + _ . -, not starting with -)"
                    ),
                ));
            }
        }
        if self.storage.backend == StorageBackend::LvmThin
            && (self.storage.vg.is_none() || self.storage.pool.is_none())
        {
            return Err((
                "storage.backend".into(),
                "lvm-thin needs storage.vg and storage.pool".into(),
            ));
        }
        self.validate_base()
    }

    /// `[[forward]]`: a VM of the profile, ports in range, a host address a host can have
    /// (whether this host has it is told at `lab up`, which reads the host), each host
    /// address and port once (0.0.0.0 meets every address).
    fn validate_forwards(&self, vms: &BTreeSet<String>) -> Result<(), (String, String)> {
        let mut taken: BTreeMap<(std::net::Ipv4Addr, u16), usize> = BTreeMap::new();
        for (i, f) in self.forwards.iter().enumerate() {
            let key = |field: &str| format!("forward[{i}].{field}");
            if !vms.contains(&f.vm) {
                return Err((
                    key("vm"),
                    format!(
                        "no VM is named {:?}: the profile's VMs are {}",
                        f.vm,
                        vms.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            for (field, value) in [("port", f.port), ("host_port", f.host_port)] {
                if !(1..=65535).contains(&value) {
                    return Err((
                        key(field),
                        format!("{field} {value} is not a port (1 to 65535)"),
                    ));
                }
            }
            let addr: std::net::Ipv4Addr = f.host_address.parse().map_err(|_| {
                (
                    key("host_address"),
                    format!("{:?} is not an IPv4 address", f.host_address),
                )
            })?;
            if addr.is_multicast() || addr.is_broadcast() {
                return Err((
                    key("host_address"),
                    format!(
                        "{addr} is not an address a host listens on: give 127.0.0.1 (this \
                         host only), 0.0.0.0 (all its addresses) or one of its addresses"
                    ),
                ));
            }
            let host_port = f.host_port as u16;
            // 0.0.0.0 publishes the port on every address, so it meets any other on it.
            if let Some((&(other, _), first)) = taken.iter().find(|((a, p), _)| {
                *p == host_port && (*a == addr || a.is_unspecified() || addr.is_unspecified())
            }) {
                return Err((
                    key("host_port"),
                    format!(
                        "{addr}:{host_port} is published twice (forward[{first}] has \
                         {other}:{host_port})"
                    ),
                ));
            }
            taken.insert((addr, host_port), i);
        }
        Ok(())
    }

    /// The profile's `[[forward]]` entries, validated.
    pub fn forwards(&self) -> Vec<Forward> {
        self.forwards
            .iter()
            .map(|f| Forward {
                vm: f.vm.clone(),
                port: f.port as u16,
                host_address: f
                    .host_address
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST),
                host_port: f.host_port as u16,
                proto: f.proto,
            })
            .collect()
    }

    fn validate_base(&mut self) -> Result<(), (String, String)> {
        let base_dir = match &self.source {
            ProfileSource::File(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
            ProfileSource::BuiltIn => PathBuf::new(),
        };
        let resolve = |p: &Path| {
            if p.is_absolute() || base_dir.as_os_str().is_empty() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            }
        };
        let b = &mut self.base;
        let sources = [b.kickstart.is_some(), b.image.is_some(), b.kernel.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if sources == 0 {
            return Err((
                "base".into(),
                "say how the base is made: kickstart (with install), image, or kernel (direct boot)".into(),
            ));
        }
        if sources > 1 {
            return Err((
                "base".into(),
                "kickstart, image and kernel are alternatives: give one".into(),
            ));
        }
        if let Some(ks) = &b.kickstart {
            if crate::kickstart::templates::find_template(ks).is_none() {
                return Err((
                    "base.kickstart".into(),
                    crate::kickstart::templates::not_found(ks),
                ));
            }
            match b.install.as_deref() {
                None => {
                    return Err((
                        "base.install".into(),
                        "a kickstart install needs an install source: an ISO path or an install tree URL".into(),
                    ));
                }
                Some(src) if !src.contains("://") => {
                    let path = resolve(Path::new(src));
                    if !path.is_file() {
                        return Err((
                            "base.install".into(),
                            format!("install ISO {} does not exist", path.display()),
                        ));
                    }
                    b.install = Some(path.display().to_string());
                }
                Some(_) => {}
            }
        }
        if let Some(image) = &b.image {
            if image.contains("://") {
                if !(image.starts_with("http://") || image.starts_with("https://")) {
                    return Err((
                        "base.image".into(),
                        format!(
                            "{image}: lab downloads http:// and https:// URLs, or give a local path"
                        ),
                    ));
                }
            } else {
                let path = resolve(Path::new(image));
                if !path.is_file() {
                    return Err((
                        "base.image".into(),
                        format!("image {} does not exist", path.display()),
                    ));
                }
                b.image = Some(path.display().to_string());
            }
        }
        self.validate_image_source()?;
        let b = &mut self.base;
        if b.image.is_none() {
            for (key, set) in [
                ("base.checksum", b.checksum.is_some()),
                ("base.checksum_url", b.checksum_url.is_some()),
                ("base.cloud_init", b.cloud_init),
                ("base.user_data", b.user_data.is_some()),
            ] {
                if set {
                    return Err((
                        key.into(),
                        "belongs to a base made from a cloud image: set base.image".into(),
                    ));
                }
            }
        }
        if !b.cloud_init {
            let vm_user_data = self.vms.iter().position(|v| v.user_data.is_some());
            if let Some(i) = vm_user_data {
                return Err((
                    format!("vm[{i}].user_data"),
                    "user-data goes to VMs with cloud_init = true in [base]".into(),
                ));
            }
            if self.base.user_data.is_some() {
                return Err((
                    "base.user_data".into(),
                    "user-data goes to VMs with cloud_init = true in [base]".into(),
                ));
            }
        }
        let b = &mut self.base;
        // Direct boot is the smoke guest's: the host's kernel and the initramfs lab makes.
        // Another kernel or initrd would be shown in the plan and then not booted, so it is
        // refused instead.
        for (key, value, special) in [
            ("base.kernel", &b.kernel, "host"),
            ("base.initrd", &b.initrd, "busybox"),
        ] {
            if let Some(v) = value
                && v != special
            {
                return Err((
                    key.into(),
                    format!(
                        "{v:?}: direct boot takes {special:?} only (the host's kernel and the \
                         initramfs lab makes, for the smoke guest); boot another system from \
                         [base] image or kickstart"
                    ),
                ));
            }
        }
        if b.disk.bytes() < ByteSize::mib(16).bytes() {
            return Err((
                "base.disk".into(),
                format!("{} is too small a disk (16MiB at least)", b.disk),
            ));
        }
        Ok(())
    }

    /// The image's source for the cache, when the base is made from an image.
    pub fn image_source(&self) -> Option<crate::cloud::ImageSource> {
        let b = &self.base;
        Some(crate::cloud::ImageSource {
            location: b.image.clone()?,
            checksum: b.checksum.as_deref().and_then(|c| c.parse().ok()),
            checksum_url: b.checksum_url.clone(),
        })
    }

    /// `[base] image`, `checksum` and `checksum_url` together: a URL is verifiable, a
    /// checksum is well formed; the user-data (base's and each VM's) is cloud-config.
    fn validate_image_source(&self) -> Result<(), (String, String)> {
        let b = &self.base;
        if let Some(c) = &b.checksum
            && let Err(e) = c.parse::<crate::cloud::Checksum>()
        {
            return Err(("base.checksum".into(), format!("{e:#}")));
        }
        if let Some(source) = self.image_source()
            && let Err(e) = crate::cloud::validate_source(&source)
        {
            let key = if b.checksum_url.is_some() && b.checksum.is_none() {
                "base.checksum_url"
            } else {
                "base.image"
            };
            return Err((key.into(), e));
        }
        if let Some(text) = &b.user_data
            && let Err(e) = crate::cloud::seed::check_user_data(text)
        {
            return Err(("base.user_data".into(), e));
        }
        for (i, vm) in self.vms.iter().enumerate() {
            if let Some(text) = &vm.user_data
                && let Err(e) = crate::cloud::seed::check_user_data(text)
            {
                return Err((format!("vm[{i}].user_data"), e));
            }
        }
        Ok(())
    }

    /// How to name this profile in a command lab suggests (`lab up X`): as it was named on
    /// the command line, a path included, else by its name; quoted for a shell.
    pub fn cli_name(&self) -> String {
        crate::runner::quote(self.arg.as_deref().unwrap_or(&self.name))
    }

    /// "FILE:LINE" of a key path such as `network.subnet` or `vm[1].memory`, for errors
    /// found after parsing (the line of the table when the key is not written).
    pub fn locate(&self, key: &str) -> String {
        match &self.source {
            ProfileSource::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => format!("{}:{}", path.display(), line_of_key(&text, key)),
                Err(_) => path.display().to_string(),
            },
            ProfileSource::BuiltIn => {
                let text = BUILT_IN
                    .iter()
                    .find(|(n, _)| *n == self.name)
                    .map_or("", |(_, t)| t);
                format!("built-in profile {}:{}", self.name, line_of_key(text, key))
            }
        }
    }

    /// Every VM instance name, expanding `count` (name1, name2, ... when count > 1).
    pub fn instances(&self) -> Vec<(String, &VmSpec)> {
        let mut out = Vec::new();
        for vm in &self.vms {
            if vm.count == 1 {
                out.push((vm.name.clone(), vm));
            } else {
                for n in 1..=vm.count {
                    out.push((format!("{}{n}", vm.name), vm));
                }
            }
        }
        out
    }

    /// Ok when `vm` is one of [`Profile::instances`]; else the usage error that names them.
    pub fn require_vm(&self, vm: &str) -> anyhow::Result<()> {
        let all: Vec<String> = self.instances().into_iter().map(|(n, _)| n).collect();
        if all.iter().any(|n| n == vm) {
            return Ok(());
        }
        Err(usage(format!(
            "profile {} has no VM {vm:?}: its VMs are {}",
            self.name,
            all.join(", ")
        )))
    }

    /// Total memory, vCPUs and provisioned disk of every VM plus the base.
    pub fn needs(&self) -> Needs {
        let mut needs = Needs {
            disk: self.base.disk.bytes(),
            ..Needs::default()
        };
        for (_, vm) in self.instances() {
            needs.memory += vm.memory.bytes();
            needs.vcpus += u64::from(vm.vcpus);
            needs.max_vcpus = needs.max_vcpus.max(u64::from(vm.vcpus));
            needs.disk += vm.disk.unwrap_or(self.base.disk).bytes();
            needs.vms += 1;
        }
        needs
    }
}

/// What a profile asks of the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Needs {
    pub vms: u64,
    pub memory: u64,
    pub vcpus: u64,
    pub max_vcpus: u64,
    /// Base plus every VM disk fully written (the worst case of thin clones).
    pub disk: u64,
}

/// Longest profile or VM name: lab derives libvirt, bridge, LV and file names from it.
pub const NAME_MAX: usize = 32;

/// Names land in libvirt, bridge, LV and file names: keep them to a safe alphabet.
fn check_name(key: &str, name: &str) -> Result<(), (String, String)> {
    if name.chars().count() > NAME_MAX {
        return Err((
            key.to_string(),
            format!(
                "name {name:?} is {} characters: lab derives libvirt, bridge and LV names from it, \
                 so {NAME_MAX} at most",
                name.chars().count()
            ),
        ));
    }
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err((
            key.to_string(),
            format!(
                "invalid name {name:?}: use lowercase letters, digits and '-', starting with a \
                 letter (it becomes part of libvirt, bridge, LV and file names)"
            ),
        ))
    }
}

fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn valid_lvm_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 127
        && !name.starts_with('-')
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+_.-".contains(c))
}

fn format_toml_error(label: &str, text: &str, key: Option<&str>, err: &toml::de::Error) -> String {
    let (line, col) = err
        .span()
        .map(|span| line_col(text, span.start))
        .unwrap_or((0, 0));
    let key = key
        .filter(|k| !k.is_empty() && *k != ".")
        .map(|k| format!("{k}: "))
        .unwrap_or_default();
    let message = err.message().trim();
    if line == 0 {
        format!("{label}: {key}{message}")
    } else {
        format!("{label}:{line}:{col}: {key}{message}")
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The line of a key path such as `vm[1].memory`, `provision.2.run` or `vars.ssh_identity`
/// in the text, found by TOML's own parser, so keys in inline tables, dotted keys and
/// sub-tables are found where they are written. A key that is not written gives the line
/// of the nearest table on its path that is (the line of `[[vm]]` for `vm[1].disk` left
/// out); a text that does not parse, line 1.
fn line_of_key(text: &str, key: &str) -> usize {
    use toml::de::{DeTable, DeValue};
    let Ok(doc) = DeTable::parse(text) else {
        return 1;
    };
    // The path's parts: `vm[1].memory` and `vm.1.memory` both give vm, 1, memory.
    let mut parts = Vec::new();
    for segment in key.split('.').filter(|s| !s.is_empty()) {
        let mut rest = segment;
        if let Some(open) = rest.find('[') {
            parts.push(&rest[..open]);
            rest = &rest[open..];
            while let Some(inner) = rest.strip_prefix('[') {
                let close = inner.find(']').unwrap_or(inner.len());
                parts.push(&inner[..close]);
                rest = inner.get(close + 1..).unwrap_or("");
            }
        } else {
            parts.push(rest);
        }
    }
    let mut at = 0;
    let mut value: Option<&DeValue<'_>> = None;
    let mut table = Some(doc.get_ref());
    for part in parts {
        let next = match (table, value) {
            (Some(t), _) => t
                .iter()
                .find(|(k, _)| k.get_ref().as_ref() == part)
                .map(|(k, v)| (k.span().start, v)),
            (None, Some(DeValue::Array(items))) => part
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get(i))
                .map(|v| (v.span().start, v)),
            _ => None,
        };
        let Some((start, v)) = next else {
            break;
        };
        at = start;
        value = Some(v.get_ref());
        table = match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    line_col(text, at).0
}

/// Load check for a path given on the command line, so errors say which flag it was.
pub fn require_existing(flag: &str, path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        Ok(())
    } else {
        Err(usage(format!(
            "{flag} {}: no such file or directory",
            path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Profile> {
        Profile::parse(text, ProfileSource::File("t.toml".into()))
    }

    #[test]
    fn every_built_in_profile_parses() {
        for (name, text) in BUILT_IN {
            let p = Profile::parse(text, ProfileSource::BuiltIn).unwrap();
            assert_eq!(&p.name, name);
        }
    }

    #[test]
    fn suggested_commands_name_the_profile_as_the_command_line_did() {
        let dir = tempfile::tempdir().unwrap();
        let profiles = dir.path().join("profiles");
        std::fs::create_dir(&profiles).unwrap();
        // The file's name and the profile's name differ: only the file name finds it.
        std::fs::write(
            profiles.join("demo.toml"),
            "name = \"stage\"\n[base]\nkernel = \"host\"\ninitrd = \"busybox\"\n[[vm]]\nname = \"a\"\n",
        )
        .unwrap();
        let by_name = Profile::load_from("demo", std::slice::from_ref(&profiles)).unwrap();
        assert_eq!(by_name.name, "stage");
        assert_eq!(by_name.cli_name(), "demo");
        let spaced = dir.path().join("my labs");
        std::fs::create_dir(&spaced).unwrap();
        let path = spaced.join("talk.toml");
        std::fs::write(&path, "name = \"talk\"\n[base]\nkernel = \"host\"\ninitrd = \"busybox\"\n[[vm]]\nname = \"a\"\n").unwrap();
        let by_path = Profile::load_from(path.to_str().unwrap(), &[]).unwrap();
        assert_eq!(by_path.cli_name(), format!("'{}'", path.display()));
        let built_in = Profile::load_from("smoke", &[]).unwrap();
        assert_eq!(built_in.cli_name(), "smoke");
    }

    #[test]
    fn keys_are_found_where_they_are_written() {
        let text = "name = \"x\"\n\
                    [network]\n\
                    mode = \"isolated\"\n\
                    subnet = \"10.1.0.0/24\"\n\
                    [vars]\n\
                    other = 1\n\
                    ssh = { identity = \"~/.ssh/id\" }\n\
                    [[vm]]\n\
                    name = \"a\"\n\
                    subnet = \"not this one\"\n\
                    [[vm]]\n\
                    name = \"b\"\n\
                    cpu.mode = \"host\"\n\
                    [[provision]]\n\
                    run = \"one\"\n\
                    [[provision]]\n\
                    name = \"two\"\n\
                    run = \"two\"\n";
        for (key, line) in [
            ("name", 1),
            ("network", 2),
            ("network.subnet", 4),
            ("vars.ssh.identity", 7),
            ("vars.ssh", 7),
            ("vm[0].subnet", 10),
            ("vm[1].name", 12),
            ("vm[1].cpu.mode", 13),
            ("provision.1.run", 18),
            ("provision[1].run", 18),
            ("provision.0.run", 15),
            // Not written: the nearest table that is.
            ("vm[1].memory", 11),
            ("network.dns", 2),
            ("base", 1),
        ] {
            assert_eq!(line_of_key(text, key), line, "{key}");
        }
        assert_eq!(line_of_key("name = [", "name"), 1);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let text = "name = \"x\"\n[[vm]]\nname = \"a\"\nmemory = \"lots\"\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.starts_with("t.toml:4:"), "{err}");
        assert!(err.contains("vm[0].memory"), "{err}");
        assert!(err.contains("lots"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse("name = \"x\"\ncolour = 1\n[[vm]]\nname = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.toml:2:"), "{err}");
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn duplicate_vm_names_are_refused_at_their_line() {
        let text = "name = \"x\"\n[[vm]]\nname = \"a\"\n[[vm]]\nname = \"a\"\n";
        let err = parse(text).unwrap_err().to_string();
        assert_eq!(err, "t.toml:5: vm[1].name: duplicate VM name \"a\"");
    }

    #[test]
    fn instances_expand_count() {
        let p = parse("name = \"x\"\n[base]\nkernel = \"host\"\n[[vm]]\nname = \"node\"\ncount = 3\n[[vm]]\nname = \"db\"\n")
            .unwrap();
        let names: Vec<String> = p.instances().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["node1", "node2", "node3", "db"]);
    }
}
