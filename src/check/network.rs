use super::{CheckContext, Report};

pub fn check(_ctx: &CheckContext<'_>, _report: &mut Report) {}
