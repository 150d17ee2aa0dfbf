//! What a push, restore or verify says to its person: lines on stderr, and a progress bar while
//! bytes move when stderr is a terminal (nothing of the bar under cron or in a pipe).

use std::io::IsTerminal as _;
use std::sync::Mutex;

use kaana_proto::node::report::Report;

/// The tool's [`Report`].
#[derive(Debug, Default)]
pub struct Bar(Mutex<Option<indicatif::ProgressBar>>);

impl Report for Bar {
    fn say(&self, line: &str) {
        let line = format!("kaana-sync: {line}");
        match self.0.lock().ok().as_ref().and_then(|b| b.as_ref()) {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn start(&self, what: &str, total: u64) {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let bar = indicatif::ProgressBar::new(total);
        let style =
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .map(|s| s.progress_chars("=> "));
        if let Ok(style) = style {
            bar.set_style(style);
        }
        bar.set_message(what.to_owned());
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(bar);
        }
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = self.0.lock().ok().as_ref().and_then(|b| b.as_ref()) {
            bar.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.0.lock().ok().and_then(|mut b| b.take()) {
            bar.finish_and_clear();
        }
    }
}
