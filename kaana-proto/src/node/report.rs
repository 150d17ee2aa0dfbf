//! How the library tells a person what happens: through a [`Report`] the tool or the server
//! passes in, never a print or a progress bar of its own. The tools decide where lines go (a
//! terminal, a log) and whether a bar is drawn.

/// What a run says to the person who started it.
pub trait Report: Send + Sync {
    /// A line for the person: a warning, or what the run is doing.
    fn say(&self, line: &str);
    /// A transfer of `total` bytes, named `what`, begins.
    fn start(&self, _what: &str, _total: u64) {}
    /// `n` more bytes of it are done.
    fn advance(&self, _n: u64) {}
    /// It is over.
    fn finish(&self) {}
}

/// Says each line on stderr after `"{name}: "`, and shows no progress.
#[derive(Debug, Clone, Copy)]
pub struct Stderr(pub &'static str);

impl Report for Stderr {
    fn say(&self, line: &str) {
        eprintln!("{}: {line}", self.0);
    }
}
