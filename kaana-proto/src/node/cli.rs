//! What every tool shares at its edges: exit codes, JSON on stdout, errors on stderr.
//!
//! stdout carries data only, one JSON object per line; everything meant for a person goes to
//! stderr. A closed stdout (`| head`) ends the tool quietly.

use std::io::{self, Write as _};
use std::process::ExitCode;

use serde::Serialize;

use crate::node::machine::Settings;

/// How a tool ended. The numbers are part of the command-line contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    /// 0: all is well.
    Ok = 0,
    /// 1: done, but something needs a person (a failed challenge, data at risk, a breach).
    Attention = 1,
    /// 2: an error; the tool could not do its job.
    Error = 2,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// The `--home` flag every tool takes, flattened into its arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HomeArgs {
    /// The node's state directory [default: $KAANA_HOME, else $XDG_STATE_HOME/kaana, else
    /// ~/.local/state/kaana].
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<std::path::PathBuf>,
}

impl HomeArgs {
    /// The state directory: `--home`, else the one the environment names ([`Settings::home`]).
    pub fn dir(&self, settings: &Settings) -> Result<std::path::PathBuf, crate::store::home::StateError> {
        self.home.clone().or_else(|| settings.home.clone()).ok_or(crate::store::home::StateError::NoHome)
    }

    /// Opens the node there.
    pub fn open(&self, settings: &Settings) -> Result<crate::store::node::Node, crate::store::home::StateError> {
        crate::store::node::Node::open_at(&self.dir(settings)?)
    }
}

/// Runs a tool's body with the settings of its environment, prints its error chain once
/// (prefixed with the tool's name) and maps the outcome to an exit code.
pub fn main_with(tool: &str, run: impl FnOnce(Settings) -> anyhow::Result<Exit>) -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{tool}: error: {e}");
            return Exit::Error.into();
        }
    };
    match run(settings) {
        Ok(exit) => exit.into(),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{tool}: error: {e:#}");
            Exit::Error.into()
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().filter_map(|c| c.downcast_ref::<io::Error>()).any(|io| io.kind() == io::ErrorKind::BrokenPipe)
}

/// The async runtime the tools run their network work on: two worker threads (the machines this
/// runs on are small, and the heavy lifting has threads of its own).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Prints the shell completions of a tool whose arguments are `A`.
pub fn print_completions<A: clap::CommandFactory>(shell: clap_complete::Shell) -> anyhow::Result<Exit> {
    let mut cmd = A::command();
    let name = cmd.get_name().to_owned();
    let mut out = io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    out.flush()?;
    Ok(Exit::Ok)
}

/// Prints the man page (roff) of a tool whose arguments are `A`: one page, its commands each
/// with their usage and options (no references to per-command pages that are not installed).
pub fn print_man<A: clap::CommandFactory>() -> anyhow::Result<Exit> {
    let mut cmd = A::command();
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = io::stdout().lock();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        writeln!(out, ".SH COMMANDS")?;
        man_commands(&mut out, cmd.get_name(), &cmd)?;
    }
    if cmd.get_after_long_help().is_some() || cmd.get_after_help().is_some() {
        man.render_extra_section(&mut out)?;
    }
    out.flush()?;
    Ok(Exit::Ok)
}

/// Each visible subcommand of `cmd` (and theirs), with its usage and options.
fn man_commands(out: &mut impl io::Write, prefix: &str, cmd: &clap::Command) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let name = format!("{prefix} {}", sub.get_name());
        writeln!(out, ".SS \"{}\"", roff(&name))?;
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            writeln!(out, "{}", roff(&about.to_string()))?;
        }
        let usage = sub.clone().render_usage().to_string();
        writeln!(out, ".PP\n\\fB{}\\fR", roff(usage.trim_start_matches("Usage: ")))?;
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let flag = match (arg.get_short(), arg.get_long()) {
                (_, Some(long)) => format!("--{long}"),
                (Some(short), None) => format!("-{short}"),
                (None, None) => arg.get_id().to_string().to_uppercase(),
            };
            writeln!(out, ".TP\n\\fB{}\\fR", roff(&flag))?;
            if let Some(help) = arg.get_long_help().or(arg.get_help()) {
                writeln!(out, "{}", roff(&help.to_string()))?;
            }
        }
        man_commands(out, &name, sub)?;
    }
    Ok(())
}

/// `text` safe in roff: backslashes escaped, no line starting a request.
fn roff(text: &str) -> String {
    let lines = text.replace('\\', "\\e");
    let lines: Vec<String> = lines
        .lines()
        .map(|l| if l.starts_with('.') || l.starts_with('\'') { format!("\\&{l}") } else { l.to_owned() })
        .collect();
    lines.join("\n")
}

/// Writes `value` to stdout as one line of JSON and flushes it, so that a pipe reader sees
/// each record as it is made.
pub fn emit<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}
