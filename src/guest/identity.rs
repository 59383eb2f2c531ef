//! placeholder, replaced by the identity module
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Result;

pub struct LabIdentity;
pub struct VmIdentity;

pub fn lab_identity(
    _dir: &Path,
    _profile: &str,
    _domain: &str,
    _hosts: &[(String, Ipv4Addr)],
    _login_keys: Vec<String>,
) -> Result<LabIdentity> {
    Ok(LabIdentity)
}

pub fn new_vm_identity(
    _dir: &Path,
    _lab: &LabIdentity,
    _profile: &str,
    _vm: &str,
) -> Result<VmIdentity> {
    Ok(VmIdentity)
}

pub fn files(_dir: &Path, _profile: &str, _domains: &[String]) -> Vec<std::path::PathBuf> {
    Vec::new()
}
