//! Output: plain text on stdout, colors only where they help and only on a terminal.

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

/// `error:` for stderr, red where colors are used there.
pub(crate) fn error_label(choice: ColorChoice) -> String {
    Out::new(use_color(choice, &std::io::stderr())).red("error:")
}

const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const RESET: &str = "\x1b[0m";

/// Styles text for stdout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Out {
    color: bool,
}

impl Out {
    /// Colors or not.
    pub(crate) fn new(color: bool) -> Self {
        Out { color }
    }

    fn paint(&self, style: &str, text: &str) -> String {
        if self.color {
            format!("{style}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    /// Emphasised.
    pub(crate) fn bold(&self, text: &str) -> String {
        self.paint(BOLD, text)
    }

    /// Less important.
    pub(crate) fn dim(&self, text: &str) -> String {
        self.paint(DIM, text)
    }

    /// Bad news.
    pub(crate) fn red(&self, text: &str) -> String {
        self.paint(RED, text)
    }

    /// Good news.
    pub(crate) fn green(&self, text: &str) -> String {
        self.paint(GREEN, text)
    }
}
