//! The processor as `/proc/cpuinfo` describes it: vendor, model, and whether it offers
//! hardware virtualisation (`vmx` on Intel, `svm` on AMD).

use serde::Serialize;

use super::Sysroot;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

impl Vendor {
    fn from_vendor_id(id: &str) -> Self {
        match id {
            "GenuineIntel" => Vendor::Intel,
            "AuthenticAMD" => Vendor::Amd,
            _ => Vendor::Other,
        }
    }

    /// The name of the virtualisation extension this vendor's CPUs carry.
    pub fn extension(self) -> &'static str {
        match self {
            Vendor::Intel => "VT-x",
            Vendor::Amd => "AMD-V (SVM)",
            Vendor::Other => "VT-x or AMD-V (SVM)",
        }
    }

    /// The KVM module that drives this vendor's extension, when there is one.
    pub fn kvm_module(self) -> Option<&'static str> {
        match self {
            Vendor::Intel => Some("kvm_intel"),
            Vendor::Amd => Some("kvm_amd"),
            Vendor::Other => None,
        }
    }
}

/// What `/proc/cpuinfo` says, reduced to what lab decides on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CpuInfo {
    pub vendor: Vendor,
    /// The raw `vendor_id`, e.g. `GenuineIntel`.
    pub vendor_id: String,
    pub model_name: String,
    /// Logical processors (`processor` entries).
    pub cpus: usize,
    pub vmx: bool,
    pub svm: bool,
    /// The `hypervisor` flag: this machine is itself a virtual machine.
    pub hypervisor: bool,
}

impl CpuInfo {
    /// `vmx` or `svm`, whichever the CPU shows.
    pub fn virt_flag(&self) -> Option<&'static str> {
        if self.vmx {
            Some("vmx")
        } else if self.svm {
            Some("svm")
        } else {
            None
        }
    }
}

/// Parse `/proc/cpuinfo` text. Vendor, model and flags come from the first processor entry
/// (they are the same on every core of the CPUs lab cares about).
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut vendor_id = None;
    let mut model_name = None;
    let mut flags = None;
    let mut cpus = 0;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "processor" => cpus += 1,
            "vendor_id" if vendor_id.is_none() => vendor_id = Some(value.to_string()),
            "model name" if model_name.is_none() => model_name = Some(value.to_string()),
            "flags" if flags.is_none() => flags = Some(value.to_string()),
            _ => {}
        }
    }
    let vendor_id = vendor_id.unwrap_or_default();
    let flags = flags.unwrap_or_default();
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    CpuInfo {
        vendor: Vendor::from_vendor_id(&vendor_id),
        vendor_id,
        model_name: model_name.unwrap_or_default(),
        cpus,
        vmx: has("vmx"),
        svm: has("svm"),
        hypervisor: has("hypervisor"),
    }
}

/// The CPU of the machine under `sysroot`, or None when `/proc/cpuinfo` cannot be read.
pub fn read(sysroot: &Sysroot) -> Option<CpuInfo> {
    sysroot.read_opt("/proc/cpuinfo").map(|t| parse_cpuinfo(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    const THIS_MACHINE: &str = include_str!("../../tests/fixtures/hosts/cpu-kvm-pvm/proc/cpuinfo");
    const INTEL: &str = include_str!("../../tests/fixtures/hosts/cpu-intel-nested-on/proc/cpuinfo");
    const AMD: &str = include_str!("../../tests/fixtures/hosts/cpu-amd-nested-on/proc/cpuinfo");
    const NO_VIRT: &str = include_str!("../../tests/fixtures/hosts/cpu-no-virt/proc/cpuinfo");

    #[test]
    fn this_machine_is_an_amd_vm_without_svm() {
        let cpu = parse_cpuinfo(THIS_MACHINE);
        assert_eq!(cpu.vendor, Vendor::Amd);
        assert_eq!(cpu.vendor_id, "AuthenticAMD");
        assert_eq!(cpu.model_name, "AMD EPYC");
        assert_eq!(cpu.cpus, 2);
        assert!(!cpu.vmx && !cpu.svm);
        assert!(cpu.hypervisor);
        assert_eq!(cpu.virt_flag(), None);
    }

    #[test]
    fn intel_with_vt_x() {
        let cpu = parse_cpuinfo(INTEL);
        assert_eq!(cpu.vendor, Vendor::Intel);
        assert_eq!(
            cpu.model_name,
            "11th Gen Intel(R) Core(TM) i7-1165G7 @ 2.80GHz"
        );
        assert_eq!(cpu.cpus, 8);
        assert_eq!(cpu.virt_flag(), Some("vmx"));
        assert!(!cpu.svm);
        assert!(!cpu.hypervisor);
        assert_eq!(cpu.vendor.kvm_module(), Some("kvm_intel"));
    }

    #[test]
    fn amd_with_svm() {
        let cpu = parse_cpuinfo(AMD);
        assert_eq!(cpu.vendor, Vendor::Amd);
        assert_eq!(cpu.model_name, "AMD Ryzen 7 PRO 5850U with Radeon Graphics");
        assert_eq!(cpu.cpus, 4);
        assert_eq!(cpu.virt_flag(), Some("svm"));
        assert_eq!(cpu.vendor.kvm_module(), Some("kvm_amd"));
    }

    #[test]
    fn intel_with_vt_x_disabled_in_firmware() {
        let cpu = parse_cpuinfo(NO_VIRT);
        assert_eq!(cpu.vendor, Vendor::Intel);
        assert_eq!(cpu.virt_flag(), None);
        assert!(!cpu.hypervisor);
    }

    #[test]
    fn a_flag_must_match_whole_words() {
        // `vmx` must not be found inside another flag's name.
        let cpu =
            parse_cpuinfo("processor\t: 0\nvendor_id\t: Weird\nflags\t\t: fpu vmxfoo svm_lock\n");
        assert_eq!(cpu.vendor, Vendor::Other);
        assert_eq!(cpu.virt_flag(), None);
        assert_eq!(cpu.model_name, "");
    }

    #[test]
    fn empty_text_means_nothing_known() {
        let cpu = parse_cpuinfo("");
        assert_eq!(cpu.cpus, 0);
        assert_eq!(cpu.vendor, Vendor::Other);
        assert_eq!(cpu.virt_flag(), None);
    }
}
