use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let args = kaana_sync::Args::parse();
    kaana_proto::node::cli::main_with("kaana-sync", |settings| kaana_sync::run(args, settings))
}
