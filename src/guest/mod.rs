//! What lab does inside the VMs, over SSH: reaching them, the provisioning steps and their
//! records, the packstack answer file, whether KVM works inside, and `lab ready`'s checks.

pub mod cloud_init;
pub mod connect;
pub mod identity;
pub mod kvm;
pub mod packstack;
pub mod provision;
pub mod ready;
pub mod ssh;
pub mod steps;
