//! The demo's transcript on stdout: numbered steps, indented details, colors only where
//! they help and only on a terminal.

use std::io::IsTerminal;

use crate::ColorChoice;

/// Whether to color output written to `stream`.
pub(crate) fn use_color(choice: ColorChoice, stream: &impl IsTerminal) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => stream.is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    }
}

/// Where the transcript goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Out {
    pub(crate) color: bool,
    pub(crate) quiet: bool,
}

const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const RESET: &str = "\x1b[0m";

impl Out {
    fn paint(&self, style: &str, text: &str) -> String {
        if self.color {
            format!("{style}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    /// The title.
    pub(crate) fn title(&self, text: &str) {
        if !self.quiet {
            println!("{}", self.paint(BOLD, text));
        }
    }

    /// A numbered step.
    pub(crate) fn step(&self, number: usize, text: &str) {
        if !self.quiet {
            println!();
            println!("{}", self.paint(BOLD, &format!("{number}. {text}")));
        }
    }

    /// A line of a step.
    pub(crate) fn line(&self, text: &str) {
        if !self.quiet {
            println!("   {text}");
        }
    }

    /// A line that explains rather than reports.
    pub(crate) fn note(&self, text: &str) {
        if !self.quiet {
            println!("   {}", self.paint(DIM, text));
        }
    }

    /// A success.
    pub(crate) fn ok(&self, text: &str) {
        if !self.quiet {
            println!("   {} {text}", self.paint(GREEN, "ok"));
        }
    }

    /// A refusal, as the host reported it.
    pub(crate) fn denied(&self, text: &str) {
        if !self.quiet {
            println!("   {} {text}", self.paint(RED, "denied"));
        }
    }

    /// A block of text (a plugin's report), indented under the step; it may carry its own
    /// colors.
    pub(crate) fn block(&self, text: &str) {
        if !self.quiet {
            for line in text.lines() {
                println!("     {line}");
            }
        }
    }

    /// The last line, printed even when quiet.
    pub(crate) fn summary(&self, text: &str) {
        println!("{}", self.paint(BOLD, text));
    }
}
