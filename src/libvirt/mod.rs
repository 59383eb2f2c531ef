//! The narrow seam to libvirt, over the `virt` crate.

pub mod console;
pub mod define;
pub mod installer;
pub mod read;
pub mod xml;

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use virt::connect::Connect;

use crate::host::{Sysroot, net};
use read::{DomainDef, NetworkDef};

/// How to start the daemon, for every "cannot connect" message.
pub const START_HINT: &str = "start libvirt: `systemctl enable --now libvirtd` (or, on \
     systemd-less hosts, as root: `virtlogd -d && libvirtd -d`); a non-root user also \
     needs to be in the `libvirt` group";

/// An open libvirt connection (closed when dropped).
pub struct Libvirt {
    conn: Connect,
    uri: String,
}

/// A libvirt version number (major * 1_000_000 + minor * 1_000 + release) as text.
pub fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1_000) % 1_000, v % 1_000)
}

impl Libvirt {
    pub fn open(uri: &str) -> Result<Libvirt> {
        crate::ui::debug(format_args!("libvirt: connecting to {uri}"));
        let conn = Connect::open(Some(uri)).map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to libvirt at {uri}: {}; {START_HINT}",
                e.message()
            )
        })?;
        Ok(Libvirt {
            conn,
            uri: uri.to_string(),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn connect(&self) -> &Connect {
        &self.conn
    }

    /// libvirt's own version and the hypervisor's (QEMU) version.
    pub fn versions(&self) -> Result<(String, Option<String>)> {
        let lib = self
            .conn
            .lib_version()
            .context("asking libvirt its version")?;
        let hyp = self.conn.hyp_version().ok().filter(|v| *v > 0);
        Ok((version_string(lib), hyp.map(version_string)))
    }

    pub fn driver(&self) -> Result<String> {
        self.conn.driver_type().context("asking libvirt its driver")
    }

    /// Every network libvirt knows, active or not, with its IPv4 subnets.
    pub fn networks(&self) -> Result<Vec<NetworkInfo>> {
        let nets = self
            .conn
            .list_all_networks(0)
            .context("listing libvirt networks")?;
        let mut out = Vec::new();
        for net in nets {
            let Some(xml) = network_xml(&net)? else {
                continue;
            };
            let mut info = NetworkInfo::from_xml(&xml)?;
            info.active = net.is_active().unwrap_or(false);
            out.push(info);
        }
        Ok(out)
    }

    /// Whether this connection may create bridges: start and stop a transient isolated
    /// network with no address (no firewall rules, no DHCP), named so nothing else clashes.
    pub fn can_create_bridges(&self) -> Result<(), String> {
        let pid = std::process::id();
        let xml = format!(
            "<network><name>lab-probe-{pid}</name><bridge name='labprb{}'/></network>",
            pid % 10_000_000
        );
        match self.conn.create_network_xml(&xml) {
            Ok(net) => {
                let _ = net.destroy();
                Ok(())
            }
            Err(e) => Err(e.message().to_string()),
        }
    }
}

/// Why a running domain's CPUs are paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// Its memory is being saved (the domain stops when that is done).
    Saving,
    /// It is being started from saved memory (it runs when that is done).
    StartingUp,
    /// Paused by a command (virDomainSuspend), by an error, or left so.
    Paused,
}

/// What lab needs to know of a libvirt network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkInfo {
    pub name: String,
    pub bridge: Option<String>,
    pub subnets: Vec<Ipv4Net>,
    pub active: bool,
}

impl NetworkInfo {
    pub fn from_xml(xml: &str) -> Result<NetworkInfo> {
        NetworkDef::from_xml(xml).map(NetworkInfo::from)
    }
}

impl From<NetworkDef> for NetworkInfo {
    fn from(def: NetworkDef) -> NetworkInfo {
        NetworkInfo {
            bridge: def.bridge_name().map(str::to_string),
            subnets: def.subnets(),
            name: def.name,
            active: false,
        }
    }
}

/// Lifecycle of the objects lab defines. Every call names the object in its error.
impl Libvirt {
    /// Define a persistent network and start it.
    pub fn define_network(&self, name: &str, xml: &str) -> Result<()> {
        let net = self
            .conn
            .define_network_xml(xml)
            .map_err(|e| anyhow::anyhow!("defining network {name}: {}", e.message()))?;
        net.create()
            .map_err(|e| anyhow::anyhow!("starting network {name}: {}", e.message()))?;
        Ok(())
    }

    pub fn start_network(&self, name: &str) -> Result<()> {
        let net = self
            .conn
            .lookup_network_by_name(name)
            .map_err(|e| anyhow::anyhow!("looking up network {name}: {}", e.message()))?;
        if !net.is_active().unwrap_or(false) {
            net.create()
                .map_err(|e| anyhow::anyhow!("starting network {name}: {}", e.message()))?;
        }
        Ok(())
    }

    /// Stop and undefine a network; one that is already gone is no error.
    pub fn remove_network(&self, name: &str) -> Result<()> {
        let Ok(net) = self.conn.lookup_network_by_name(name) else {
            return Ok(());
        };
        if net.is_active().unwrap_or(false) {
            net.destroy()
                .map_err(|e| anyhow::anyhow!("stopping network {name}: {}", e.message()))?;
        }
        if net.is_persistent().unwrap_or(false) {
            net.undefine()
                .map_err(|e| anyhow::anyhow!("undefining network {name}: {}", e.message()))?;
        }
        Ok(())
    }

    pub fn define_domain(&self, name: &str, xml: &str) -> Result<()> {
        self.conn
            .define_domain_xml(xml)
            .map_err(|e| anyhow::anyhow!("defining domain {name}: {}", e.message()))?;
        Ok(())
    }

    pub fn start_domain(&self, name: &str) -> Result<()> {
        let dom = self.domain(name)?;
        if !dom.is_active().unwrap_or(false) {
            dom.create()
                .map_err(|e| anyhow::anyhow!("starting domain {name}: {}", e.message()))?;
        }
        Ok(())
    }

    /// Power a domain off at once (the lab's disks are disposable clones).
    pub fn stop_domain(&self, name: &str) -> Result<()> {
        let Ok(dom) = self.conn.lookup_domain_by_name(name) else {
            return Ok(());
        };
        if dom.is_active().unwrap_or(false) {
            dom.destroy()
                .map_err(|e| anyhow::anyhow!("stopping domain {name}: {}", e.message()))?;
        }
        Ok(())
    }

    /// Save a running domain's memory and state to disk and stop it (libvirt's managed
    /// save): the next start resumes it where it was, processes and all, even after the
    /// host rebooted. A domain that is not running is left as it is. It resumes running
    /// even when it was saved paused (as an interrupted lab command may leave it).
    pub fn save_domain(&self, name: &str) -> Result<()> {
        let dom = self.domain(name)?;
        if dom.is_active().unwrap_or(false) {
            dom.managed_save(virt::sys::VIR_DOMAIN_SAVE_RUNNING)
                .map_err(|e| anyhow::anyhow!("saving domain {name}: {}", e.message()))?;
        }
        Ok(())
    }

    /// Whether a domain has memory saved by [`Libvirt::save_domain`], which its next start
    /// resumes from.
    pub fn domain_saved(&self, name: &str) -> bool {
        self.conn
            .lookup_domain_by_name(name)
            .is_ok_and(|d| d.has_managed_save(0).unwrap_or(false))
    }

    /// Throw away a domain's saved memory, so its next start boots afresh: what a VM
    /// whose disk is replaced needs (its saved memory belongs to the old disk).
    pub fn discard_saved(&self, name: &str) -> Result<()> {
        let Ok(dom) = self.conn.lookup_domain_by_name(name) else {
            return Ok(());
        };
        if dom.has_managed_save(0).unwrap_or(false) {
            dom.managed_save_remove(0).map_err(|e| {
                anyhow::anyhow!(
                    "removing the saved memory of domain {name}: {}",
                    e.message()
                )
            })?;
        }
        Ok(())
    }

    /// Pause a running domain's CPUs (virDomainSuspend): the guest stands still, its disk
    /// and memory no longer change, while QEMU keeps both.
    pub fn suspend_domain(&self, name: &str) -> Result<()> {
        self.domain(name)?
            .suspend()
            .map_err(|e| anyhow::anyhow!("pausing domain {name}: {}", e.message()))
    }

    pub fn resume_domain(&self, name: &str) -> Result<()> {
        self.domain(name)?
            .resume()
            .map_err(|e| anyhow::anyhow!("resuming domain {name}: {}", e.message()))
    }

    /// Whether a domain is running with its CPUs paused.
    pub fn domain_paused(&self, name: &str) -> bool {
        self.conn.lookup_domain_by_name(name).is_ok_and(|d| {
            d.state().is_ok_and(|(s, _)| {
                matches!(
                    s,
                    virt::enumutil::Enum::Known(virt::domain::DomainState::Paused)
                )
            })
        })
    }

    /// How a running domain's CPUs stand: None when they run (or the domain is not
    /// running), else why libvirt says they are paused.
    pub fn domain_pause(&self, name: &str) -> Option<Pause> {
        use virt::domain::{DomainPausedReason as Why, DomainState, DomainStateReason};
        use virt::enumutil::Enum::Known;
        let (state, why) = self.conn.lookup_domain_by_name(name).ok()?.state().ok()?;
        if state != Known(DomainState::Paused) {
            return None;
        }
        Some(match why {
            Known(DomainStateReason::Paused(Known(Why::Save))) => Pause::Saving,
            Known(DomainStateReason::Paused(Known(Why::StartingUp))) => Pause::StartingUp,
            _ => Pause::Paused,
        })
    }

    /// Whether a running domain runs again from memory (restored from a save, or
    /// resumed after a pause) rather than from a boot: such a VM is waited for until it
    /// answers, whoever resumed it (a lab killed right after may not have).
    pub fn domain_resumed(&self, name: &str) -> bool {
        use virt::domain::{DomainRunningReason as Why, DomainStateReason};
        use virt::enumutil::Enum::Known;
        self.conn
            .lookup_domain_by_name(name)
            .is_ok_and(|d| match d.state() {
                Ok((_, Known(DomainStateReason::Running(Known(why))))) => matches!(
                    why,
                    Why::Restored | Why::Unpaused | Why::SaveCancelled | Why::FromSnapshot
                ),
                _ => false,
            })
    }

    /// Wait until libvirt is done with what it does to a domain on its own: a save, or a
    /// start from saved memory, goes on in libvirtd when the lab that asked for it was
    /// killed, the domain paused meanwhile, and no other change is taken until it ends.
    /// An error, naming the domain and what libvirt still does, after `timeout`.
    pub fn wait_settled(&self, name: &str, timeout: std::time::Duration) -> Result<()> {
        let until = std::time::Instant::now() + timeout;
        loop {
            let job = self.conn.lookup_domain_by_name(name).is_ok_and(|d| {
                d.job_info().is_ok_and(|j| {
                    matches!(
                        j.r#type as u32,
                        virt::sys::VIR_DOMAIN_JOB_BOUNDED | virt::sys::VIR_DOMAIN_JOB_UNBOUNDED
                    )
                })
            });
            let pause = self.domain_pause(name);
            let moving = matches!(pause, Some(Pause::Saving | Pause::StartingUp));
            if !job && !moving {
                return Ok(());
            }
            if std::time::Instant::now() >= until {
                bail!(
                    "domain {name}: libvirt is still {} it after {} s; try again when it is done \
                     (virsh -c {} domstate --reason {name})",
                    match pause {
                        Some(Pause::StartingUp) => "starting",
                        Some(Pause::Saving) => "saving",
                        _ => "running a job on",
                    },
                    timeout.as_secs(),
                    self.uri
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Save a domain's memory and device state to `file` (virDomainSaveFlags, not the
    /// managed save): the domain stops, and its disks are closed when this returns. A
    /// restore from the file starts paused.
    pub fn save_domain_to(&self, name: &str, file: &std::path::Path) -> Result<()> {
        let dom = self.domain(name)?;
        let to = std::ffi::CString::new(file.as_os_str().as_encoded_bytes())
            .context("a file name with a NUL byte")?;
        // SAFETY: a valid domain pointer and C string; the virt crate has no wrapper.
        let rc = unsafe {
            virt::sys::virDomainSaveFlags(
                dom.as_ptr(),
                to.as_ptr(),
                std::ptr::null(),
                virt::sys::VIR_DOMAIN_SAVE_PAUSED,
            )
        };
        if rc < 0 {
            bail!(
                "saving the memory of domain {name} to {}: {}",
                file.display(),
                virt::error::Error::last_error().message()
            );
        }
        Ok(())
    }

    /// Start a domain from memory saved by [`Libvirt::save_domain_to`], paused. The
    /// domain's definition saved with the memory is used without its `<backingStore>`:
    /// the disk's chain is read from the images as they are now (a snapshot puts a new
    /// layer under the disk after the memory was saved).
    pub fn restore_domain_from(&self, name: &str, file: &std::path::Path) -> Result<()> {
        let path = file.to_string_lossy();
        let xml = self
            .conn
            .save_image_xml_desc(&path, virt::sys::VIR_DOMAIN_XML_SECURE)
            .map_err(|e| {
                anyhow::anyhow!(
                    "reading the domain saved in {}: {}",
                    file.display(),
                    e.message()
                )
            })?;
        let xml = xml::without_backing_stores(&xml)
            .with_context(|| format!("reading the domain saved in {}", file.display()))?;
        self.conn
            .restore_domain_flags(&path, Some(&xml), virt::sys::VIR_DOMAIN_SAVE_PAUSED)
            .map_err(|e| {
                anyhow::anyhow!(
                    "restoring domain {name} from {}: {}",
                    file.display(),
                    e.message()
                )
            })
    }

    /// Stop and undefine a domain; one that is already gone is no error.
    pub fn remove_domain(&self, name: &str) -> Result<()> {
        self.stop_domain(name)?;
        let Ok(dom) = self.conn.lookup_domain_by_name(name) else {
            return Ok(());
        };
        let flags = virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM
            | virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
        dom.undefine_flags(flags)
            .map_err(|e| anyhow::anyhow!("undefining domain {name}: {}", e.message()))?;
        Ok(())
    }

    fn domain(&self, name: &str) -> Result<virt::domain::Domain> {
        self.conn
            .lookup_domain_by_name(name)
            .map_err(|e| anyhow::anyhow!("looking up domain {name}: {}", e.message()))
    }

    /// The running domain's numeric id (it changes only when the domain restarts).
    pub fn domain_id(&self, name: &str) -> Option<u32> {
        self.conn.lookup_domain_by_name(name).ok()?.id()
    }

    pub fn domain_exists(&self, name: &str) -> bool {
        self.conn.lookup_domain_by_name(name).is_ok()
    }

    pub fn domain_running(&self, name: &str) -> bool {
        self.conn
            .lookup_domain_by_name(name)
            .is_ok_and(|d| d.is_active().unwrap_or(false))
    }

    /// The IPv4 address libvirt's DHCP server leased to `mac` for `domain`.
    pub fn lease(&self, domain: &str, mac: &str) -> Option<Ipv4Addr> {
        let dom = self.conn.lookup_domain_by_name(domain).ok()?;
        let ifaces = dom
            .interface_addresses(virt::sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
            .ok()?;
        ifaces
            .iter()
            .filter(|i| {
                i.hwaddr
                    .as_deref()
                    .is_some_and(|h| h.eq_ignore_ascii_case(mac))
            })
            .flat_map(|i| i.addrs.iter())
            .find_map(|a| a.addr.parse().ok())
    }

    /// The interfaces of running domain `name` that are off the bridge libvirt put them
    /// on, as (tap, bridge): a network stopped and started again under a running domain
    /// comes back as a new bridge without the domain's tap, and the VM is cut off while
    /// libvirt still shows it attached.
    pub fn detached_interfaces(&self, name: &str, host: &Sysroot) -> Vec<(String, String)> {
        let Some(def) = self
            .conn
            .lookup_domain_by_name(name)
            .ok()
            .filter(|d| d.is_active().unwrap_or(false))
            .and_then(|d| d.xml_desc(0).ok())
            .and_then(|xml| DomainDef::from_xml(&xml).ok())
        else {
            return Vec::new();
        };
        def.interface_links()
            .into_iter()
            .filter(|(tap, bridge)| {
                net::master_of(host, tap).is_some_and(|master| master.as_ref() != Some(bridge))
            })
            .collect()
    }

    /// Put a domain's tap back on its bridge, as libvirt does when it starts the domain.
    pub fn reattach(&self, tap: &str, bridge: &str) -> Result<()> {
        crate::runner::Cmd::new("ip")
            .args(["link", "set", "dev", tap, "master", bridge])
            .run()
            .with_context(|| format!("putting interface {tap} back on bridge {bridge}"))?;
        Ok(())
    }

    /// The images one domain's disks write to, in the order of its definition (backing
    /// files left out).
    pub fn domain_disks(&self, name: &str) -> Vec<String> {
        self.conn
            .lookup_domain_by_name(name)
            .ok()
            .and_then(|d| d.xml_desc(0).ok())
            .and_then(|xml| DomainDef::from_xml(&xml).ok())
            .map(|def| def.disk_sources())
            .unwrap_or_default()
    }

    /// Disks that running domains hold open: never cloned from, removed or compacted.
    pub fn disks_in_use(&self) -> Result<Vec<crate::storage::InUse>> {
        let flags = virt::sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE;
        let mut out = Vec::new();
        for dom in self
            .conn
            .list_all_domains(flags)
            .context("listing running domains")?
        {
            let name = dom.name().unwrap_or_default();
            // Gone since it was listed: it holds nothing open.
            let Ok(xml) = dom.xml_desc(0) else {
                continue;
            };
            let def = DomainDef::from_xml(&xml)
                .with_context(|| format!("reading the disks of running domain {name}"))?;
            for path in def.disk_sources() {
                out.push(crate::storage::InUse {
                    domain: name.clone(),
                    path: path.into(),
                });
            }
        }
        Ok(out)
    }
}

/// What lab needs to know of a libvirt storage pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoragePoolInfo {
    pub name: String,
    /// `dir`, `logical`, ...
    pub kind: String,
    /// `<source><name>`: the volume group of a logical pool.
    pub source_name: Option<String>,
    pub target_path: Option<String>,
    pub active: bool,
    /// libvirt starts it when the daemon starts.
    pub autostart: bool,
}

#[derive(Deserialize)]
struct StoragePoolXml {
    #[serde(rename = "@type")]
    kind: String,
    name: String,
    #[serde(default)]
    source: Option<PoolSourceXml>,
    #[serde(default)]
    target: Option<PoolTargetXml>,
}

#[derive(Deserialize)]
struct PoolSourceXml {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct PoolTargetXml {
    #[serde(default)]
    path: Option<String>,
}

impl StoragePoolInfo {
    pub fn from_xml(xml: &str) -> Result<StoragePoolInfo> {
        let parsed: StoragePoolXml =
            quick_xml::de::from_str(xml).context("parsing a libvirt storage pool's XML")?;
        Ok(StoragePoolInfo {
            name: parsed.name,
            kind: parsed.kind,
            source_name: parsed.source.and_then(|s| s.name),
            target_path: parsed.target.and_then(|t| t.path),
            active: false,
            autostart: false,
        })
    }
}

/// Storage pools: lab defines one of type `dir` over a volume group's `/dev/VG` so libvirt's
/// tools show its thin volumes. Never `build` or `delete`: for a dir pool those would mkdir
/// or rmdir the target (for a logical pool, create or remove the volume group itself).
impl Libvirt {
    /// Every storage pool libvirt knows, active or not.
    pub fn storage_pools(&self) -> Result<Vec<StoragePoolInfo>> {
        let pools = self
            .conn
            .list_all_storage_pools(0)
            .context("listing libvirt storage pools")?;
        let mut out = Vec::new();
        for pool in pools {
            let xml = pool
                .xml_desc(0)
                .context("reading a libvirt storage pool's XML")?;
            let mut info = StoragePoolInfo::from_xml(&xml)?;
            info.active = pool.is_active().unwrap_or(false);
            info.autostart = pool.autostart().unwrap_or(false);
            out.push(info);
        }
        Ok(out)
    }

    fn storage_pool(&self, name: &str) -> Result<virt::storage_pool::StoragePool> {
        self.conn
            .lookup_storage_pool_by_name(name)
            .map_err(|e| anyhow::anyhow!("looking up storage pool {name}: {}", e.message()))
    }

    /// Define a persistent storage pool and start it; libvirt does not start it by itself
    /// (no autostart). When it cannot start it is undefined again: a failure leaves nothing
    /// behind.
    pub fn define_storage_pool(&self, name: &str, xml: &str) -> Result<()> {
        let pool = self
            .conn
            .define_storage_pool_xml(xml, 0)
            .map_err(|e| anyhow::anyhow!("defining storage pool {name}: {}", e.message()))?;
        if let Err(e) = pool.create(0) {
            let _ = pool.undefine();
            bail!(
                "starting storage pool {name}: {}; storage pool {name} was not kept",
                e.message()
            );
        }
        Ok(())
    }

    /// Whether libvirt starts the pool when the daemon starts. Only the definition changes:
    /// the pool is neither started nor stopped.
    pub fn set_storage_pool_autostart(&self, name: &str, autostart: bool) -> Result<()> {
        self.storage_pool(name)?
            .set_autostart(autostart)
            .map(|_| ())
            .map_err(|e| {
                anyhow::anyhow!("setting autostart of storage pool {name}: {}", e.message())
            })
    }

    /// Undefine an inactive pool: nothing runs, the definition goes. An active pool is
    /// refused (libvirt refuses too): stopping it is the caller's decision.
    pub fn undefine_storage_pool(&self, name: &str) -> Result<()> {
        let pool = self.storage_pool(name)?;
        if pool.is_active().unwrap_or(true) {
            bail!("storage pool {name} is active: not undefined");
        }
        pool.undefine()
            .map_err(|e| anyhow::anyhow!("undefining storage pool {name}: {}", e.message()))
    }

    pub fn start_storage_pool(&self, name: &str) -> Result<()> {
        let pool = self.storage_pool(name)?;
        if !pool.is_active().unwrap_or(false) {
            pool.create(0)
                .map_err(|e| anyhow::anyhow!("starting storage pool {name}: {}", e.message()))?;
        }
        Ok(())
    }

    /// Have libvirt read the pool's volumes again (it lists them from a cache).
    pub fn refresh_storage_pool(&self, name: &str) -> Result<()> {
        self.storage_pool(name)?
            .refresh(0)
            .map_err(|e| anyhow::anyhow!("refreshing storage pool {name}: {}", e.message()))
    }

    /// The names of an active pool's volumes.
    pub fn storage_volumes(&self, name: &str) -> Result<Vec<String>> {
        let mut names = self.storage_pool(name)?.list_volumes().map_err(|e| {
            anyhow::anyhow!("listing volumes of storage pool {name}: {}", e.message())
        })?;
        names.sort();
        Ok(names)
    }

    /// Stop and undefine a storage pool (its volumes stay where they are); one that is
    /// already gone is no error.
    pub fn remove_storage_pool(&self, name: &str) -> Result<()> {
        let Ok(pool) = self.conn.lookup_storage_pool_by_name(name) else {
            return Ok(());
        };
        if pool.is_active().unwrap_or(false) {
            pool.destroy()
                .map_err(|e| anyhow::anyhow!("stopping storage pool {name}: {}", e.message()))?;
        }
        if pool.is_persistent().unwrap_or(false) {
            pool.undefine()
                .map_err(|e| anyhow::anyhow!("undefining storage pool {name}: {}", e.message()))?;
        }
        Ok(())
    }
}

/// The XML of a listed network; None when it is gone since it was listed (a transient
/// network that was stopped, such as another lab's bridge probe).
pub fn network_xml(net: &virt::network::Network) -> Result<Option<String>> {
    match net.xml_desc(0) {
        Ok(xml) => Ok(Some(xml)),
        Err(e) if e.code() == virt::error::ErrorNumber::NoNetwork.into() => Ok(None),
        Err(e) => Err(e).context("reading a libvirt network's XML"),
    }
}

/// The user libvirt runs QEMU as, when it is a separate one (Debian: libvirt-qemu,
/// Fedora: qemu): it must be able to reach every image, console log and kernel lab writes.
fn qemu_user() -> Option<(String, u32)> {
    for name in ["libvirt-qemu", "qemu"] {
        let c = std::ffi::CString::new(name).ok()?;
        // SAFETY: getpwnam with a valid C string; the result is read at once.
        let pw = unsafe { libc::getpwnam(c.as_ptr()) };
        if !pw.is_null() {
            // SAFETY: pw is non-null and points to a valid passwd entry.
            return Some((name.to_string(), unsafe { (*pw).pw_uid }));
        }
    }
    None
}

/// Refuse, before anything is made, a directory QEMU could not reach: a home directory of
/// mode 0700 is the usual case. lab does not change the permissions of directories it did
/// not make; it says which one and how.
pub fn preflight_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some((user, uid)) = qemu_user() else {
        return Ok(());
    };
    let existing = crate::host::resources::nearest_existing(dir);
    let mut at = existing.canonicalize().unwrap_or(existing);
    loop {
        if let Ok(meta) = std::fs::metadata(&at) {
            let others_search = meta.mode() & 0o001 != 0;
            if !others_search && meta.uid() != uid {
                bail!(
                    "QEMU runs as {user} and could not reach {}: {} is mode {:o}; \
                     run `chmod o+x {}` or set [storage] dir to a directory such as /var/lib/lab/images",
                    dir.display(),
                    at.display(),
                    meta.mode() & 0o7777,
                    at.display()
                );
            }
        }
        if !at.pop() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_qemu_cannot_reach_is_refused_naming_the_culprit() {
        use std::os::unix::fs::PermissionsExt;
        if qemu_user().is_none() {
            // libvirt's packages create this user; setup-host.sh makes sure it exists.
            panic!("no libvirt-qemu or qemu user on this machine");
        }
        let top = tempfile::tempdir().unwrap();
        let private = top.path().join("home");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let images = private.join("labs/images");
        let err = preflight_dir(&images).unwrap_err().to_string();
        assert!(err.contains("is mode 700"), "{err}");
        assert!(
            err.contains(&format!(
                "chmod o+x {}",
                private.canonicalize().unwrap().display()
            )),
            "{err}"
        );
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).unwrap();
        preflight_dir(&images).unwrap();
    }

    #[test]
    fn network_xml_gives_name_bridge_and_subnets() {
        let xml = "<network>
  <name>default</name>
  <uuid>8a6a7f4c-3f0e-4a8e-9d8e-6c0e2a4f1b11</uuid>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <mac address='52:54:00:12:34:56'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
  </ip>
  <ip family='ipv6' address='fd00:1::1' prefix='64'/>
  <ip address='10.9.8.1' prefix='23'/>
</network>";
        let info = NetworkInfo::from_xml(xml).unwrap();
        assert_eq!(info.name, "default");
        assert_eq!(info.bridge.as_deref(), Some("virbr0"));
        assert_eq!(
            info.subnets,
            vec![
                "192.168.122.0/24".parse::<Ipv4Net>().unwrap(),
                "10.9.8.0/23".parse().unwrap()
            ]
        );
    }

    #[test]
    fn versions_are_decoded() {
        assert_eq!(version_string(9_000_000), "9.0.0");
        assert_eq!(version_string(7_002_022), "7.2.22");
    }

    #[test]
    fn a_wrong_uri_says_how_to_start_libvirt() {
        let err = Libvirt::open("qemu+unix:///system?socket=/nonexistent/lab-sock")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cannot connect to libvirt"), "{err}");
        assert!(err.contains("libvirtd"), "{err}");
    }
}
