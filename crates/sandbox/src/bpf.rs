//! A seccomp program that finds a system call's answer by binary search.
//!
//! seccompiler lays a filter out as one chain: every system call number is compared in
//! turn, so a call listed last, or not listed, runs through every comparison. That costs
//! twice per plugin start: the kernel, when a filter is installed, runs it for every system
//! call number to build its cache of calls that are always allowed (with a chain of 900
//! instructions: 0.7 ms of the plugin's start, under a spinlock), and each call the cache
//! does not cover runs it again. Here the number line is cut into runs of numbers that
//! answer the same (a stretch of calls always allowed, the gap of unlisted ones after it,
//! one call with rules) and the run is found by binary search, one comparison per level.
//! The program is short as well as quick: installing it costs the kernel time for each
//! instruction (it translates and compiles the whole program, on the plugin's start).
//! Each call's rules are those seccompiler builds ([`SeccompRule`] into BPF), so what a
//! program answers is unchanged: the tests run both layouts on every number and on the
//! arguments every rule compares.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompRule, sock_filter};

const BPF_LD: u16 = 0x00;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_JMP: u16 = 0x05;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_JGE: u16 = 0x30;
const BPF_K: u16 = 0x00;
const BPF_RET: u16 = 0x06;

/// Where `struct seccomp_data` keeps the call's number and architecture.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

/// The most instructions a classic BPF program may have (`BPF_MAXINSNS`).
const MAX_LEN: usize = 4096;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// How a listed call is answered: always the same, or by its block of rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Always(u32),
    Rules(usize),
}

/// A call's groups of rules, in order, each with its answer: the first group one of whose
/// rules holds answers (a group without rules always holds).
pub(crate) type Groups = Vec<(Vec<SeccompRule>, u32)>;

/// Where an unconditional jump goes, resolved once the program is laid out.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The block of rules numbered so.
    Block(usize),
    /// A point in the search, bound later.
    Label(usize),
}

/// The numbers from `.0` up to the next run's first answer `.1`.
type Run = (u32, Answer);

/// Every number from 0 to `u32::MAX` in runs of the same answer: `entries` (number,
/// answer), sorted by number, and `otherwise` between and after them. Neighbours that
/// answer the same are one run, so a stretch of calls always allowed is one comparison.
fn runs(entries: &[(u32, Answer)], otherwise: u32) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::with_capacity(2 * entries.len() + 1);
    let mut add = |first: u32, answer: Answer| {
        if runs.last().is_none_or(|&(_, last)| last != answer) {
            runs.push((first, answer));
        }
    };
    let mut next = Some(0_u32);
    for &(number, answer) in entries {
        if let Some(gap) = next.filter(|&next| next < number) {
            add(gap, Answer::Always(otherwise));
        }
        add(number, answer);
        next = number.checked_add(1);
    }
    if let Some(next) = next {
        add(next, Answer::Always(otherwise));
    }
    runs
}

#[derive(Default)]
struct Layout {
    code: Vec<sock_filter>,
    /// Each jump to resolve: its index in `code`, and where it goes.
    jumps: Vec<(usize, Target)>,
    labels: Vec<usize>,
}

impl Layout {
    fn push(&mut self, instruction: sock_filter) {
        self.code.push(instruction);
    }

    fn jump_to(&mut self, target: Target) {
        self.jumps.push((self.code.len(), target));
        self.code.push(stmt(BPF_JMP | BPF_JA, 0));
    }

    fn label(&mut self) -> usize {
        self.labels.push(usize::MAX);
        self.labels.len() - 1
    }

    /// The search over `runs` (at least one), with the number loaded: a comparison with
    /// the middle run's first number, the lower half, then the upper half, down to one
    /// run, which returns its answer or jumps to its rules.
    fn search(&mut self, runs: &[Run]) {
        let [(_, answer)] = runs else {
            let middle = runs.len() / 2;
            let lower = Self::search_len(&runs[..middle]);
            match u8::try_from(lower) {
                // At least the middle number: over the lower half.
                Ok(over) => self.push(jump(BPF_JMP | BPF_JGE | BPF_K, runs[middle].0, over, 0)),
                // Too far for a conditional jump: on to a jump over it; else past that.
                Err(_) => {
                    let upper = self.label();
                    self.push(jump(BPF_JMP | BPF_JGE | BPF_K, runs[middle].0, 0, 1));
                    self.jump_to(Target::Label(upper));
                    self.search(&runs[..middle]);
                    self.labels[upper] = self.code.len();
                    self.search(&runs[middle..]);
                    return;
                }
            }
            self.search(&runs[..middle]);
            self.search(&runs[middle..]);
            return;
        };
        match *answer {
            Answer::Always(action) => self.push(stmt(BPF_RET | BPF_K, action)),
            Answer::Rules(block) => self.jump_to(Target::Block(block)),
        }
    }

    /// How many instructions [`Layout::search`] lays out for `runs`.
    fn search_len(runs: &[Run]) -> usize {
        if runs.len() <= 1 {
            return 1;
        }
        let middle = runs.len() / 2;
        let lower = Self::search_len(&runs[..middle]);
        let far = usize::from(u8::try_from(lower).is_err());
        1 + far + lower + Self::search_len(&runs[middle..])
    }
}

/// The program that answers a call listed in `calls` as its [`Groups`] say (and
/// `otherwise` when none holds), any other call `otherwise`, and kills the process for a
/// call of another architecture (`audit_arch`), as seccompiler's filters do.
pub(crate) fn compile(
    audit_arch: u32,
    calls: BTreeMap<i64, Groups>,
    otherwise: u32,
) -> Result<BpfProgram, String> {
    let mut entries = Vec::with_capacity(calls.len());
    let mut blocks: Vec<Vec<sock_filter>> = Vec::new();
    for (number, groups) in calls {
        let number = u32::try_from(number)
            .map_err(|_| format!("system call number {number} is out of range"))?;
        if let Some((rules, action)) = groups.first()
            && rules.is_empty()
        {
            entries.push((number, Answer::Always(*action)));
            continue;
        }
        // Each rule, entered at its start, answers or falls through to the next; a group
        // without rules answers; after the last, `otherwise`.
        let mut block = Vec::new();
        let mut ended = false;
        for (rules, action) in groups {
            if rules.is_empty() {
                block.push(stmt(BPF_RET | BPF_K, action));
                ended = true;
                break;
            }
            for rule in rules {
                block.extend(BpfProgram::from(rule));
                block.push(stmt(BPF_RET | BPF_K, action));
            }
        }
        if !ended {
            block.push(stmt(BPF_RET | BPF_K, otherwise));
        }
        entries.push((number, Answer::Rules(blocks.len())));
        blocks.push(block);
    }
    entries.sort_unstable_by_key(|(number, _)| *number);

    let mut layout = Layout::default();
    layout.push(stmt(BPF_LD | BPF_W | BPF_ABS, ARCH_OFFSET));
    layout.push(jump(BPF_JMP | BPF_JEQ | BPF_K, audit_arch, 1, 0));
    layout.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS));
    layout.push(stmt(BPF_LD | BPF_W | BPF_ABS, NR_OFFSET));
    layout.search(&runs(&entries, otherwise));
    let mut starts = Vec::with_capacity(blocks.len());
    for block in blocks {
        starts.push(layout.code.len());
        layout.code.extend(block);
    }
    // Never reached, but needed: seccompiler's code for a rule holds a jump that is never
    // taken to one past the rule's end, and the kernel refuses a program with a jump out
    // of it.
    layout.push(stmt(BPF_RET | BPF_K, otherwise));
    if layout.code.len() > MAX_LEN {
        return Err(format!(
            "the filter has {} instructions, more than the kernel's {MAX_LEN}",
            layout.code.len()
        ));
    }
    for &(at, target) in &layout.jumps {
        let to = match target {
            Target::Block(block) => starts[block],
            Target::Label(label) => layout.labels[label],
        };
        // Forward only, as classic BPF jumps are.
        let offset = to
            .checked_sub(at + 1)
            .ok_or_else(|| "a backward jump in the filter".to_owned())?;
        layout.code[at].k = u32::try_from(offset).map_err(|_| "a jump too far".to_owned())?;
    }
    check(&layout.code)?;
    Ok(layout.code)
}

/// What the kernel checks of a classic BPF program's shape before it takes it: every
/// jump, taken or not, lands inside the program, and the last instruction returns. A
/// program that fails here would fail every plugin's start with `EINVAL`.
fn check(program: &[sock_filter]) -> Result<(), String> {
    let len = program.len();
    for (at, instruction) in program.iter().enumerate() {
        if instruction.code & 0x07 != BPF_JMP {
            continue;
        }
        let offsets: &[u32] = if instruction.code == BPF_JMP | BPF_JA {
            &[instruction.k]
        } else {
            &[u32::from(instruction.jt), u32::from(instruction.jf)]
        };
        for &offset in offsets {
            let to = usize::try_from(offset)
                .ok()
                .and_then(|offset| (at + 1).checked_add(offset));
            if to.is_none_or(|to| to >= len) {
                return Err(format!(
                    "the filter's jump at {at} (of {len} instructions) lands outside it"
                ));
            }
        }
    }
    match program.last() {
        Some(last) if last.code == BPF_RET | BPF_K => Ok(()),
        _ => Err("the filter does not end with a return".to_owned()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const BPF_ALU: u16 = 0x04;
    const BPF_AND: u16 = 0x50;
    const BPF_JGT: u16 = 0x20;
    const BPF_JSET: u16 = 0x40;

    /// What `program` answers for a call of `arch` with `number` and `args`: a classic BPF
    /// interpreter for the instructions seccomp filters use, as the kernel runs them.
    pub(crate) fn run(program: &[sock_filter], arch: u32, number: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&number.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, arg) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_ne_bytes());
        }
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let insn = &program[pc];
            pc += 1;
            match insn.code {
                code if code == BPF_LD | BPF_W | BPF_ABS => {
                    let at = insn.k as usize;
                    a = u32::from_ne_bytes(data[at..at + 4].try_into().expect("4 bytes"));
                }
                code if code == BPF_ALU | BPF_AND | BPF_K => a &= insn.k,
                code if code == BPF_JMP | BPF_JA => pc += insn.k as usize,
                code if code & 0x07 == BPF_JMP => {
                    let taken = match code & 0xf0 {
                        op if op == BPF_JEQ => a == insn.k,
                        op if op == BPF_JGE => a >= insn.k,
                        op if op == BPF_JGT => a > insn.k,
                        op if op == BPF_JSET => a & insn.k != 0,
                        other => panic!("jump op {other:#x} not interpreted"),
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
                code if code == BPF_RET | BPF_K => return insn.k,
                other => panic!("instruction {other:#x} not interpreted"),
            }
        }
    }

    #[test]
    fn the_interpreter_follows_a_hand_written_program() {
        let program =
            compile(7, BTreeMap::from([(3, vec![(Vec::new(), 22)])]), 11).expect("compiles");
        assert_eq!(run(&program, 7, 3, [0; 6]), 22);
        assert_eq!(run(&program, 7, 4, [0; 6]), 11);
        assert_eq!(run(&program, 8, 3, [0; 6]), libc::SECCOMP_RET_KILL_PROCESS);
    }

    #[test]
    fn a_program_the_kernel_would_refuse_is_refused_with_its_reason() {
        let ret = || stmt(BPF_RET | BPF_K, 0);
        assert_eq!(
            check(&[jump(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, 0), ret()]),
            Ok(())
        );
        let out = check(&[jump(BPF_JMP | BPF_JEQ | BPF_K, 1, 1, 0), ret()]).unwrap_err();
        assert!(out.contains("jump at 0 (of 2 instructions)"), "{out}");
        let out = check(&[stmt(BPF_JMP | BPF_JA, 1), ret()]).unwrap_err();
        assert!(out.contains("lands outside"), "{out}");
        let out = check(&[ret(), stmt(BPF_LD | BPF_W | BPF_ABS, 0)]).unwrap_err();
        assert!(out.contains("does not end with a return"), "{out}");
    }

    #[test]
    fn every_number_is_found_however_many_are_listed() {
        for count in [0_u32, 1, 2, 4, 5, 9, 17, 300] {
            // Two answers in turn, so that leaves hold more than one return.
            let listed: BTreeMap<i64, Groups> = (0..count)
                .map(|i| (i64::from(i * 3 + 1), vec![(Vec::new(), 20 + i % 2)]))
                .collect();
            let program = compile(7, listed, 11).expect("compiles");
            for number in 0..count * 3 + 5 {
                let expected = if number % 3 == 1 && number < count * 3 {
                    20 + (number / 3) % 2
                } else {
                    11
                };
                assert_eq!(
                    run(&program, 7, number, [0; 6]),
                    expected,
                    "{count}: {number}"
                );
            }
            assert_eq!(run(&program, 7, u32::MAX, [0; 6]), 11);
        }
    }
}
