//! A command's result on stdout, and its messages on stderr, written without `println!`, which
//! panics when the reader has gone (`cidboot verify --json DOC | head -1`). A closed stdout is
//! [`CliError::StdoutClosed`]: the command ends quietly with exit status 141 (128 + SIGPIPE,
//! what a shell reports for a program that the closed pipe killed), and no success is claimed
//! for output nobody received.

use std::io::{self, Write};

use super::CliError;

/// Writes one line of the result to stdout and flushes it.
pub fn line(args: std::fmt::Arguments<'_>) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// What a failed write to stdout means for the command.
pub fn stdout_error(e: io::Error) -> CliError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CliError::StdoutClosed
    } else {
        CliError::Io {
            what: "writing to stdout".into(),
            source: e,
        }
    }
}

/// A line on stderr; a stderr that is gone is ignored (there is nowhere else to say it).
pub fn err_line(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "{args}");
}

/// `println!` that returns [`CliError::StdoutClosed`] instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out::line(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::out::err_line(format_args!($($arg)*))
    };
}
