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
//!
//! The program is short as well as quick: installing it costs the kernel time for each
//! instruction (it translates and compiles the whole program, on the plugin's start), so
//! a call's rules are laid out here too ([`Condition`]s, as seccompiler's, in rules and
//! groups), with an argument loaded once for as long as it stays in the accumulator: a
//! set of allowed values is one load and one comparison each, where seccompiler's code
//! for a rule takes five or more. What a program answers is unchanged: the tests run
//! seccompiler's chains and this program on every number and on the arguments every rule
//! compares, and this block layout against what its rules read as.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, sock_filter};

const BPF_LD: u16 = 0x00;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_JMP: u16 = 0x05;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_JGE: u16 = 0x30;
const BPF_JSET: u16 = 0x40;
const BPF_ALU: u16 = 0x04;
const BPF_AND: u16 = 0x50;
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

/// How a [`Condition`] compares its argument with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    /// The argument's bits in the mask equal the value.
    MaskedEq(u64),
}

/// A comparison of one of a call's arguments, as seccompiler's `SeccompCondition`: of its
/// low 32 bits (a C `int`, whatever the upper half holds) or of all 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Condition {
    pub(crate) arg: u8,
    pub(crate) wide: bool,
    pub(crate) op: Op,
    pub(crate) value: u64,
}

impl Condition {
    /// A comparison of argument `arg` (0-5); of its low 32 bits unless `wide`, when `value`
    /// (and a mask) must fit in them.
    pub(crate) fn new(arg: u8, wide: bool, op: Op, value: u64) -> Result<Self, String> {
        let mask = match op {
            Op::MaskedEq(mask) => mask,
            Op::Eq | Op::Ne => 0,
        };
        if arg > 5 {
            return Err(format!("argument {arg}: a system call's are 0 to 5"));
        }
        if !wide && (value > u64::from(u32::MAX) || mask > u64::from(u32::MAX)) {
            return Err(format!(
                "{value:#x} (mask {mask:#x}) compared with 32 bits of argument {arg}"
            ));
        }
        Ok(Self {
            arg,
            wide,
            op,
            value,
        })
    }
}

/// Conditions that hold together (at least one).
pub(crate) type Rule = Vec<Condition>;

/// A call's groups of rules, in order, each with its answer: the first group one of whose
/// rules holds answers (a group without rules always holds).
pub(crate) type Groups = Vec<(Vec<Rule>, u32)>;

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
        entries.push((number, Answer::Rules(blocks.len())));
        blocks.push(
            block(&groups, otherwise)
                .map_err(|reason| format!("system call {number}: {reason}"))?,
        );
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

/// Where argument `arg`'s low (or high) 32 bits are in `struct seccomp_data`, on the
/// little-endian machines the sandbox supports.
fn word_offset(arg: u8, high: bool) -> u32 {
    16 + 8 * u32::from(arg) + if high { 4 } else { 0 }
}

/// A 32-bit word of an argument: which argument, and whether its high half.
type Word = (u8, bool);

/// A block of rules being laid out: conditional jumps go to labels, bound as it goes.
#[derive(Default)]
struct Block {
    /// Each instruction, with the labels its conditional jumps go to.
    code: Vec<(sock_filter, usize, usize)>,
    /// Where each label is bound, and what the accumulator holds on the jumps to it so far
    /// (`None` before the first; `Some(None)` when they disagree, or hold no word).
    labels: Vec<(Option<usize>, Option<Option<Word>>)>,
    /// The word the accumulator holds here, on every path that reaches this point.
    holds: Option<Word>,
}

impl Block {
    fn label(&mut self) -> usize {
        self.labels.push((None, None));
        self.labels.len() - 1
    }

    /// Binds `label` here, just after a jump or a return: the accumulator holds what every
    /// jump to it left there.
    fn bind(&mut self, label: usize) {
        let (at, reached) = &mut self.labels[label];
        *at = Some(self.code.len());
        self.holds = reached.flatten();
    }

    /// An instruction that does not jump.
    fn stmt(&mut self, code: u16, k: u32) {
        self.code.push((stmt(code, k), usize::MAX, usize::MAX));
    }

    fn load(&mut self, word: Word) {
        if self.holds != Some(word) {
            self.stmt(BPF_LD | BPF_W | BPF_ABS, word_offset(word.0, word.1));
            self.holds = Some(word);
        }
    }

    /// A jump to `yes` if the test holds, else to `no`.
    fn test(&mut self, code: u16, k: u32, yes: usize, no: usize) {
        for label in [yes, no] {
            let reached = &mut self.labels[label].1;
            *reached = Some(match *reached {
                None => self.holds,
                Some(before) => before.filter(|_| before == self.holds),
            });
        }
        self.code.push((stmt(BPF_JMP | code | BPF_K, k), yes, no));
    }

    /// The accumulator's 32 bits `word` of the argument, masked, tested equal to `value`:
    /// on to `yes` or `no`. A mask of one bit tested equal to itself, or any mask tested
    /// equal to zero, is one `JSET`, which leaves the accumulator as it was.
    fn equal(&mut self, word: Word, mask: u32, value: u32, yes: usize, no: usize) {
        self.load(word);
        match mask {
            u32::MAX => self.test(BPF_JEQ, value, yes, no),
            _ if value == 0 => self.test(BPF_JSET, mask, no, yes),
            _ if value == mask && mask.is_power_of_two() => self.test(BPF_JSET, mask, yes, no),
            _ => {
                self.stmt(BPF_ALU | BPF_AND | BPF_K, mask);
                self.holds = None;
                self.test(BPF_JEQ, value, yes, no);
            }
        }
    }

    /// `condition`: on to `holds` if it holds, else to `fails`.
    fn condition(&mut self, condition: &Condition, holds: usize, fails: usize) {
        let (mask, equal) = match condition.op {
            Op::Eq => (u64::MAX, true),
            Op::Ne => (u64::MAX, false),
            Op::MaskedEq(mask) => (mask, true),
        };
        let (arg, value) = (condition.arg, condition.value);
        // Truncations meant: the halves of 64-bit values.
        let (low_mask, low_value) = (mask as u32, value as u32);
        let (high_mask, high_value) = ((mask >> 32) as u32, (value >> 32) as u32);
        let (yes, no) = if equal {
            (holds, fails)
        } else {
            (fails, holds)
        };
        if condition.wide {
            // Equal when both halves are.
            let low = self.label();
            self.equal((arg, true), high_mask, high_value, low, no);
            self.bind(low);
            self.equal((arg, false), low_mask, low_value, yes, no);
        } else {
            self.equal((arg, false), low_mask, low_value, yes, no);
        }
    }

    /// The block's instructions, with every jump's offset.
    fn finish(self) -> Result<Vec<sock_filter>, String> {
        let mut code = Vec::with_capacity(self.code.len());
        for (at, (mut instruction, yes, no)) in self.code.into_iter().enumerate() {
            let offset = |label: usize| -> Result<u8, String> {
                let to = self
                    .labels
                    .get(label)
                    .and_then(|(to, _)| *to)
                    .ok_or("a jump to a place never laid out")?;
                to.checked_sub(at + 1)
                    .and_then(|offset| u8::try_from(offset).ok())
                    .ok_or_else(|| format!("a jump from {at} to {to} in its rules"))
            };
            if instruction.code & 0x07 == BPF_JMP {
                instruction.jt = offset(yes)?;
                instruction.jf = offset(no)?;
            }
            code.push(instruction);
        }
        Ok(code)
    }
}

/// The code of a call's [`Groups`]: each group's rules in turn, each rule's conditions in
/// turn, a condition that fails going on to the next rule (after the group's last rule,
/// the next group), a rule that holds to its group's answer; after the last group,
/// `otherwise`. An argument's word is loaded once for as long as it stays in the
/// accumulator: a set of values is one load and one comparison each.
fn block(groups: &Groups, otherwise: u32) -> Result<Vec<sock_filter>, String> {
    let mut block = Block::default();
    for (rules, action) in groups {
        let answer = block.label();
        let next_group = block.label();
        for (index, rule) in rules.iter().enumerate() {
            let last_rule = index + 1 == rules.len();
            let fails = if last_rule { next_group } else { block.label() };
            let Some((last, conditions)) = rule.split_last() else {
                return Err("a rule without conditions".into());
            };
            for condition in conditions {
                let next = block.label();
                block.condition(condition, next, fails);
                block.bind(next);
            }
            // After the group's last rule, the answer is the next instruction.
            block.condition(last, answer, fails);
            if !last_rule {
                block.bind(fails);
            }
        }
        if rules.is_empty() {
            block.stmt(BPF_RET | BPF_K, *action);
            return block.finish();
        }
        block.bind(answer);
        block.stmt(BPF_RET | BPF_K, *action);
        block.bind(next_group);
    }
    block.stmt(BPF_RET | BPF_K, otherwise);
    block.finish()
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

    const BPF_JGT: u16 = 0x20;

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

    /// What `groups` answer for `args`, read as their types say.
    fn answer(groups: &Groups, otherwise: u32, args: [u64; 6]) -> u32 {
        let holds = |c: &Condition| {
            let arg = args[usize::from(c.arg)];
            let arg = if c.wide { arg } else { arg & 0xffff_ffff };
            match c.op {
                Op::Eq => arg == c.value,
                Op::Ne => arg != c.value,
                Op::MaskedEq(mask) => arg & mask == c.value,
            }
        };
        for (rules, action) in groups {
            if rules.is_empty() || rules.iter().any(|rule| rule.iter().all(holds)) {
                return *action;
            }
        }
        otherwise
    }

    #[test]
    fn rules_answer_as_they_read_whatever_the_accumulator_held_before() {
        let c = |arg, wide, op, value| Condition::new(arg, wide, op, value).unwrap();
        let groups: Groups = vec![
            // A mask that needs an AND, then the same argument unmasked: loaded again.
            (
                vec![
                    vec![c(0, false, Op::MaskedEq(0xf0), 0x30)],
                    vec![c(0, false, Op::Eq, 5)],
                    vec![c(0, false, Op::MaskedEq(0x8), 0), c(1, false, Op::Eq, 2)],
                ],
                11,
            ),
            (
                vec![
                    vec![c(1, true, Op::Ne, 0x1_0000_0002), c(0, false, Op::Eq, 7)],
                    // After a rule whose failures leave different words: loaded again.
                    vec![c(1, false, Op::Eq, 9)],
                    vec![c(
                        2,
                        true,
                        Op::MaskedEq(0xffff_0000_0000_00ff),
                        0x1234_0000_0000_0012,
                    )],
                    vec![c(2, true, Op::Eq, 0x1_0000_0000)],
                ],
                12,
            ),
            // A set of values left out, one load for all.
            (
                vec![vec![
                    c(0, false, Op::Eq, 8),
                    c(1, false, Op::Ne, 3),
                    c(1, false, Op::Ne, 4),
                ]],
                13,
            ),
            (
                vec![vec![
                    c(0, false, Op::MaskedEq(0x4), 0x4),
                    c(1, false, Op::Eq, 4),
                ]],
                16,
            ),
            // Two bits, both set: not one `JSET`.
            (vec![vec![c(0, false, Op::MaskedEq(0x6), 0x6)]], 17),
        ];
        let ended = [groups.clone(), vec![(Vec::new(), 15)]].concat();
        let mut values: Vec<u64> = vec![0, 2, 3, 4, 5, 6, 7, 8, 9, 0x30, 0x38, 0x34, 0xff];
        values.extend([0x1_0000_0000, 0x1_0000_0002, 0x2_0000_0000, 0x2_0000_0007]);
        values.extend([0x1234_0000_0000_0012, 0x1234_0000_0000_1012]);
        values.extend([0x1235_0000_0000_0012, 0x1234_0000_0000_0013, u64::MAX]);
        for groups in [groups, ended] {
            let code = block(&groups, 14).expect("compiles");
            check(&code).expect("well formed");
            let program = [vec![stmt(BPF_LD | BPF_W | BPF_ABS, NR_OFFSET)], code].concat();
            for &a in &values {
                for &b in &values {
                    for &d in &values {
                        let args = [a, b, d, 0, 0, 0];
                        assert_eq!(
                            run(&program, 0, 0, args),
                            answer(&groups, 14, args),
                            "{args:x?}"
                        );
                    }
                }
            }
        }
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
