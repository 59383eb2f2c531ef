//! What lab does inside the VMs, over SSH: the connection and its keys, the provisioning
//! steps, and the packstack answer file.

pub mod packstack;
pub mod provision;
pub mod ssh;
