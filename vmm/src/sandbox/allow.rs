//! An allow-list: the system calls a thread may make, some only with given argument values,
//! compiled to a seccomp-BPF program by `seccompiler`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};
use syscalls::Sysno;

/// When a call is allowed: with any arguments, or when one of its arguments has one of the
/// listed values (argument index, value).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Args {
    Any,
    OneOf(Vec<(u8, u64)>),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList(BTreeMap<Sysno, Args>);

impl AllowList {
    /// Allows `calls` with any arguments.
    pub fn calls(mut self, calls: &[Sysno]) -> Self {
        for &c in calls {
            self.0.insert(c, Args::Any);
        }
        self
    }

    /// Allows `call` when argument `arg` (0-based) is one of `values` (compared as 32-bit
    /// values: every argument restricted here is an `int` or an ioctl request).
    pub fn call_with(mut self, call: Sysno, arg: u8, values: &[u64]) -> Self {
        let pairs = values.iter().map(|&v| (arg, v));
        match self.0.entry(call).or_insert_with(|| Args::OneOf(Vec::new())) {
            Args::Any => {}
            Args::OneOf(list) => {
                for p in pairs {
                    if !list.contains(&p) {
                        list.push(p);
                    }
                }
            }
        }
        self
    }

    /// Everything either list allows.
    pub fn union(mut self, other: &AllowList) -> Self {
        for (&call, args) in &other.0 {
            self = match args {
                Args::Any => self.calls(&[call]),
                Args::OneOf(pairs) => pairs.iter().fold(self, |l, &(arg, v)| l.call_with(call, arg, &[v])),
            };
        }
        self
    }

    /// Whether `call` is allowed with argument `arg` set to `value` (for tests and reports).
    pub fn allows(&self, call: Sysno, arg: u8, value: u64) -> bool {
        match self.0.get(&call) {
            None => false,
            Some(Args::Any) => true,
            Some(Args::OneOf(pairs)) => pairs.contains(&(arg, value)),
        }
    }

    /// How many system calls the list names.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The calls by name, those with argument rules marked with how many values they allow,
    /// e.g. `ioctl(12)`.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .0
            .iter()
            .map(|(c, a)| match a {
                Args::Any => c.name().to_string(),
                Args::OneOf(p) => format!("{}({})", c.name(), p.len()),
            })
            .collect();
        names.join(" ")
    }

    /// The BPF program: listed calls go through; any other call gets `mismatch`.
    pub fn compile(&self, mismatch: SeccompAction) -> Result<BpfProgram, String> {
        let mut rules = BTreeMap::new();
        for (&call, args) in &self.0 {
            let list = match args {
                Args::Any => Vec::new(),
                Args::OneOf(pairs) => pairs
                    .iter()
                    .map(|&(arg, v)| {
                        let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)?;
                        SeccompRule::new(vec![cond])
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("seccomp rule for {}: {e}", call.name()))?,
            };
            rules.insert(i64::from(call.id()), list);
        }
        let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| format!("seccomp: {e}"))?;
        let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch).map_err(|e| e.to_string())?;
        BpfProgram::try_from(filter).map_err(|e| format!("seccomp: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_rules_merge_and_any_wins() {
        let a = AllowList::default().calls(&[Sysno::read]).call_with(Sysno::ioctl, 1, &[1, 2]);
        let b = AllowList::default().call_with(Sysno::ioctl, 1, &[2, 3]).call_with(Sysno::read, 0, &[7]);
        let u = a.union(&b);
        assert!(u.allows(Sysno::read, 0, 99), "read was allowed with any arguments");
        for v in [1, 2, 3] {
            assert!(u.allows(Sysno::ioctl, 1, v));
        }
        assert!(!u.allows(Sysno::ioctl, 1, 4));
        assert!(!u.allows(Sysno::write, 0, 0));
        assert_eq!(u.describe(), "read ioctl(3)");
        assert_eq!(u.len(), 2);
        assert!(!u.compile(SeccompAction::Trap).unwrap().is_empty());
    }
}
