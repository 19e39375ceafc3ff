//! The seccomp filter: an allowlist of system calls ([`crate::allowed_syscalls`]), refusals
//! by name and argument, and terminal queries.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction};

use crate::bpf::{Condition, Op, Rule};
use crate::{Layer, SandboxError, syscalls};

/// The ioctl requests a plugin may make on any descriptor: none reaches a file's inode or
/// a device.
const ALLOWED_IOCTLS: [u64; 4] = [libc::FIONREAD, libc::FIONBIO, libc::FIOCLEX, libc::FIONCLEX];

/// Terminal queries, answered `ENOTTY` so `isatty` says no without a denial.
const TERMINAL_IOCTLS: [u64; 2] = [libc::TCGETS, libc::TIOCGWINSZ];

/// The prctl options a plugin may use: thread names, the parent-death signal, and reads.
const ALLOWED_PRCTLS: [libc::c_int; 7] = [
    libc::PR_SET_NAME,
    libc::PR_GET_NAME,
    libc::PR_SET_PDEATHSIG,
    libc::PR_GET_PDEATHSIG,
    libc::PR_GET_DUMPABLE,
    libc::PR_GET_SECCOMP,
    // Installing the sandbox's later filters (a filter can only restrict further).
    libc::PR_SET_NO_NEW_PRIVS,
];

/// The fcntl commands a plugin may use: no signals to other processes (`F_SETOWN`,
/// `F_SETSIG`), no leases or directory notifications. `F_GET_SEALS` reads the seals of a
/// memory file the host handed over (a bulk write's ring), to check them.
const ALLOWED_FCNTLS: [libc::c_int; 14] = [
    libc::F_DUPFD,
    libc::F_DUPFD_CLOEXEC,
    libc::F_GETFD,
    libc::F_SETFD,
    libc::F_GETFL,
    libc::F_SETFL,
    libc::F_GETLK,
    libc::F_SETLK,
    libc::F_SETLKW,
    libc::F_OFD_GETLK,
    libc::F_OFD_SETLK,
    libc::F_OFD_SETLKW,
    libc::F_GETPIPE_SZ,
    libc::F_GET_SEALS,
];

/// The plugin's system call filter: one program that answers each call as three sets of
/// rules would, applied in order:
/// 1. the allowlist ([`syscalls`]): what is listed is allowed (some calls only with
///    some arguments); everything else fails with `ENOSYS`, as on a kernel that lacks it,
///    so the C library and the Go runtime fall back cleanly (`clone3` to `clone`);
/// 2. refusals by name or argument, with `EPERM`: dangerous calls, sockets other than
///    `AF_UNIX`, ioctl requests, prctl options and fcntl commands off the list, clone flags
///    for namespaces or `CLONE_PARENT` (and, without processes, anything but a thread),
///    setting resource limits;
/// 3. terminal queries, with `ENOTTY`.
///
/// As the kernel combines separate programs (the strictest answer, and of two errors the
/// later program's), a terminal query reads `ENOTTY`, else a refusal `EPERM` although the
/// allowlist says `ENOSYS`, else the allowlist decides. One program rather than three:
/// each program installed costs the plugin's start (the kernel runs it for every call
/// number), and each call the kernel's cache does not cover runs every program.
pub(crate) fn filters(allow_processes: bool) -> Result<Vec<BpfProgram>, SandboxError> {
    // The same for every plugin of a host: built once for each setting (56 us a start).
    static BUILT: [OnceLock<Vec<BpfProgram>>; 2] = [OnceLock::new(), OnceLock::new()];
    let built = &BUILT[usize::from(allow_processes)];
    if let Some(programs) = built.get() {
        return Ok(programs.clone());
    }
    let programs = build(allow_processes)?;
    Ok(built.get_or_init(|| programs).clone())
}

fn build(allow_processes: bool) -> Result<Vec<BpfProgram>, SandboxError> {
    let (calls, otherwise) = merged(programs(allow_processes)?);
    let program =
        crate::bpf::compile(audit_arch()?, calls, otherwise).map_err(|reason| SandboxError {
            layer: Layer::Seccomp,
            reason,
        })?;
    Ok(vec![program])
}

/// The three programs' rules as one: for each call, the groups of the later programs first,
/// each with the answer its program gives when it holds (a program whose answer is to
/// allow, when its rules do not hold, has no say then); the first program's answer when it
/// does not hold, `otherwise`.
fn merged(programs: Vec<Program>) -> (BTreeMap<i64, crate::bpf::Groups>, u32) {
    let otherwise = programs
        .first()
        .map_or(libc::SECCOMP_RET_ALLOW, |(_, mismatch, _)| {
            mismatch.clone().into()
        });
    let mut calls: BTreeMap<i64, crate::bpf::Groups> = BTreeMap::new();
    for (rules, _, matched) in programs.into_iter().rev() {
        let matched: u32 = matched.into();
        for (number, chain) in rules {
            calls.entry(number).or_default().push((chain, matched));
        }
    }
    (calls, otherwise)
}

/// The architecture every call must be made for (`AUDIT_ARCH_*` of linux/audit.h: the ELF
/// machine, 64-bit, little-endian).
fn audit_arch() -> Result<u32, SandboxError> {
    const ARCH_64_LE: u32 = 0x8000_0000 | 0x4000_0000;
    match std::env::consts::ARCH {
        "x86_64" => Ok(ARCH_64_LE | 62),
        "aarch64" => Ok(ARCH_64_LE | 183),
        "riscv64" => Ok(ARCH_64_LE | 243),
        other => Err(SandboxError {
            layer: Layer::Seccomp,
            reason: format!("no seccomp filter for the {other} architecture"),
        }),
    }
}

/// One program's rules: for each listed call the rules of which one must hold (none: the
/// call alone), what a call answers otherwise, and what it answers when listed and held.
type Program = (BTreeMap<i64, Vec<Rule>>, SeccompAction, SeccompAction);

/// The three programs of [`filters`], as rules.
fn programs(allow_processes: bool) -> Result<Vec<Program>, SandboxError> {
    let fail = |reason: String| SandboxError {
        layer: Layer::Seccomp,
        reason,
    };
    // Every value compared is a non-negative constant of the kernel's ABI.
    let value = |constant: i64| constant.unsigned_abs();
    let dword = |arg: u8, op: Op, value: u64| Condition::new(arg, false, op, value).map_err(fail);
    let errno = |code: libc::c_int| SeccompAction::Errno(code.unsigned_abs());

    let unix = value(libc::AF_UNIX.into());
    let ioctls = ALLOWED_IOCTLS.map(|request| request & 0xffff_ffff);
    let terminal = TERMINAL_IOCTLS.map(|request| request & 0xffff_ffff);
    let prctls = ALLOWED_PRCTLS.map(|option| value(option.into()));
    let fcntls = ALLOWED_FCNTLS.map(|command| value(command.into()));
    let forbidden_clone = value(
        (libc::CLONE_NEWNS
            | libc::CLONE_NEWCGROUP
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_PARENT)
            .into(),
    );
    let thread = value(libc::CLONE_THREAD.into());
    // prlimit64(pid, resource, new_limit, old_limit): reading only, a null new_limit.
    let no_new_limit = Condition::new(2, true, Op::Eq, 0).map_err(fail)?;
    let some_new_limit = Condition::new(2, true, Op::Ne, 0).map_err(fail)?;

    // 1. The allowlist.
    let mut allowed: BTreeMap<i64, Vec<Rule>> = syscalls::allowed_syscalls(allow_processes)
        .iter()
        .map(|call| (call.number, Vec::new()))
        .collect();
    for call in [libc::SYS_socket, libc::SYS_socketpair] {
        allowed.insert(call, vec![vec![dword(0, Op::Eq, unix)?]]);
    }
    let one_of = |arg: u8, values: &[u64]| -> Result<Vec<Rule>, SandboxError> {
        values
            .iter()
            .map(|&allowed| Ok(vec![dword(arg, Op::Eq, allowed)?]))
            .collect()
    };
    allowed.insert(libc::SYS_ioctl, one_of(1, &ioctls)?);
    allowed.insert(libc::SYS_prctl, one_of(0, &prctls)?);
    allowed.insert(libc::SYS_fcntl, one_of(1, &fcntls)?);
    let mut clone = vec![dword(0, Op::MaskedEq(forbidden_clone), 0)?];
    if !allow_processes {
        clone.push(dword(0, Op::MaskedEq(thread), thread)?);
    }
    allowed.insert(libc::SYS_clone, vec![clone]);
    allowed.insert(libc::SYS_prlimit64, vec![vec![no_new_limit]]);

    // 2. Refusals with EPERM.
    let mut refused: BTreeMap<i64, Vec<Rule>> = syscalls::refused_syscalls(allow_processes)
        .iter()
        .map(|call| (call.number, Vec::new()))
        .collect();
    for call in [libc::SYS_socket, libc::SYS_socketpair] {
        refused.insert(call, vec![vec![dword(0, Op::Ne, unix)?]]);
    }
    let none_of = |arg: u8, values: &[u64]| -> Result<Vec<Rule>, SandboxError> {
        let conditions = values
            .iter()
            .map(|&allowed| dword(arg, Op::Ne, allowed))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(vec![conditions])
    };
    let answered = [ioctls.as_slice(), terminal.as_slice()].concat();
    refused.insert(libc::SYS_ioctl, none_of(1, &answered)?);
    refused.insert(libc::SYS_prctl, none_of(0, &prctls)?);
    refused.insert(libc::SYS_fcntl, none_of(1, &fcntls)?);
    // Alternatives: any forbidden flag; without processes, no CLONE_THREAD.
    let mut clone_refusals = Vec::new();
    let mut flags = forbidden_clone;
    while flags != 0 {
        let flag = flags & flags.wrapping_neg();
        flags &= !flag;
        clone_refusals.push(vec![dword(0, Op::MaskedEq(flag), flag)?]);
    }
    if !allow_processes {
        clone_refusals.push(vec![dword(0, Op::MaskedEq(thread), 0)?]);
    }
    refused.insert(libc::SYS_clone, clone_refusals);
    refused.insert(libc::SYS_prlimit64, vec![vec![some_new_limit]]);

    // 3. Terminal queries.
    let terminal_rules = BTreeMap::from([(libc::SYS_ioctl, one_of(1, &terminal)?)]);

    Ok(vec![
        (allowed, errno(libc::ENOSYS), SeccompAction::Allow),
        (refused, SeccompAction::Allow, errno(libc::EPERM)),
        (terminal_rules, SeccompAction::Allow, errno(libc::ENOTTY)),
    ])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every value an argument is compared with in `rules`, every mask and each of its
    /// bits, and their neighbours, at both halves of the argument.
    fn probes(rules: &BTreeMap<i64, Vec<Rule>>) -> Vec<u64> {
        let mut values: BTreeSet<u64> = [0, 1, 2, 0xffff_ffff, u64::MAX, 1 << 32].into();
        for condition in rules.values().flatten().flatten() {
            let mut compared = vec![condition.value];
            if let Op::MaskedEq(mask) = condition.op {
                compared.push(mask);
                compared.extend((0..64).map(|bit| 1 << bit).filter(|bit| mask & bit != 0));
            }
            for value in compared {
                for v in [value, value.wrapping_add(1), value.wrapping_sub(1)] {
                    values.insert(v);
                    values.insert(v | (1 << 32));
                }
            }
        }
        values.into_iter().collect()
    }

    /// `rules` as seccompiler's.
    fn seccompiler_rules(
        rules: &BTreeMap<i64, Vec<Rule>>,
    ) -> BTreeMap<i64, Vec<seccompiler::SeccompRule>> {
        use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
        let condition = |c: &Condition| {
            let op = match c.op {
                Op::Eq => SeccompCmpOp::Eq,
                Op::Ne => SeccompCmpOp::Ne,
                Op::MaskedEq(mask) => SeccompCmpOp::MaskedEq(mask),
            };
            let len = if c.wide {
                SeccompCmpArgLen::Qword
            } else {
                SeccompCmpArgLen::Dword
            };
            SeccompCondition::new(c.arg, len, op, c.value).unwrap()
        };
        rules
            .iter()
            .map(|(&number, rules)| {
                let rules = rules
                    .iter()
                    .map(|rule| SeccompRule::new(rule.iter().map(condition).collect()).unwrap())
                    .collect();
                (number, rules)
            })
            .collect()
    }

    /// What the kernel answers for a call with several programs installed (`answers`, in
    /// the order installed): the strictest action, and of equals the latest program's.
    fn combined(answers: &[u32]) -> u32 {
        let action = |ret: u32| (ret & libc::SECCOMP_RET_ACTION_FULL).cast_signed();
        let mut ret = libc::SECCOMP_RET_ALLOW;
        for &answer in answers.iter().rev() {
            if action(answer) < action(ret) {
                ret = answer;
            }
        }
        ret
    }

    /// The one program answers exactly as seccompiler's three chains, installed in order,
    /// answer together: for every call number (and x32's), and for every argument value
    /// any rule compares, at every argument.
    #[test]
    fn the_one_program_answers_every_call_as_seccompilers_three_programs_do() {
        use seccompiler::{SeccompFilter, TargetArch};
        let arch = audit_arch().unwrap();
        let run = crate::bpf::tests::run;
        for processes in [false, true] {
            let programs = programs(processes).unwrap();
            let chains: Vec<BpfProgram> = programs
                .iter()
                .map(|(rules, mismatch, matched)| {
                    BpfProgram::try_from(
                        SeccompFilter::new(
                            seccompiler_rules(rules),
                            mismatch.clone(),
                            matched.clone(),
                            TargetArch::try_from(std::env::consts::ARCH).unwrap(),
                        )
                        .unwrap(),
                    )
                    .unwrap()
                })
                .collect();
            let one = filters(processes).unwrap();
            assert_eq!(one.len(), 1);
            let one = &one[0];
            let every_rule: BTreeMap<i64, Vec<Rule>> = programs
                .iter()
                .flat_map(|(rules, _, _)| rules.clone())
                .collect();
            let probes = probes(&every_rule);
            let check = |arch: u32, number: u32, args: [u64; 6]| {
                let answers: Vec<u32> = chains
                    .iter()
                    .map(|chain| run(chain, arch, number, args))
                    .collect();
                assert_eq!(
                    run(one, arch, number, args),
                    combined(&answers),
                    "call {number}, arguments {args:x?}, processes {processes}"
                );
            };
            for number in (0..1024).chain((0..1024).map(|n| n | 0x4000_0000)) {
                check(arch, number, [0; 6]);
                if !every_rule.contains_key(&i64::from(number)) {
                    continue;
                }
                for arg in 0..3 {
                    for &value in &probes {
                        let mut args = [0; 6];
                        args[arg] = value;
                        check(arch, number, args);
                    }
                }
            }
            check(arch ^ 1, 0, [0; 6]);
        }
    }

    #[test]
    fn the_seccomp_filters_build_with_and_without_processes() {
        assert_eq!(filters(false).unwrap().len(), 1);
        assert_eq!(filters(true).unwrap().len(), 1);
    }

    #[test]
    fn no_system_call_is_both_allowed_and_refused() {
        for processes in [false, true] {
            let allowed: BTreeSet<i64> = syscalls::allowed_syscalls(processes)
                .iter()
                .chain(syscalls::CONDITIONAL)
                .map(|call| call.number)
                .collect();
            for call in syscalls::refused_syscalls(processes) {
                assert!(!allowed.contains(&call.number), "{} is both", call.name);
            }
        }
    }
}
